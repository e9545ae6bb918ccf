"""Thin setup: package layout plus the optional C++/CUDA extension clockwork_engine._C.

The extension is built from csrc/ when sources exist and torch is importable (build with
`pip install --no-build-isolation -e .` so the installed torch is used). Switches:
  CLOCKWORK_BUILD_EXT=0       skip the extension (the engine falls back to torch ops)
  CLOCKWORK_CUDA=auto|0|1     CUDA sources too: auto = when torch has CUDA and nvcc exists
  CLOCKWORK_CUDA_ARCHS="8.0;9.0"
"""

import glob
import os

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def extensions():
    if os.environ.get("CLOCKWORK_BUILD_EXT", "1") == "0":
        return [], {}
    cpp = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    if not cpp:
        return [], {}
    import torch
    from torch.utils import cpp_extension

    want_cuda = os.environ.get("CLOCKWORK_CUDA", "auto")
    has_cuda = torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None
    if want_cuda == "1" and not has_cuda:
        raise RuntimeError("CLOCKWORK_CUDA=1 but torch has no CUDA build or nvcc was not found")
    cu = sorted(glob.glob("csrc/cuda/*.cu") + glob.glob("csrc/cuda/*.cpp")) if (
        want_cuda == "1" or (want_cuda == "auto" and has_cuda)) else []
    # Threads come from at::parallel_for inside libtorch; the kernels only need `omp simd`,
    # so no second OpenMP runtime is linked next to torch's.
    cxx = ["-O3", "-std=c++17", "-fopenmp-simd"]
    common = dict(include_dirs=[os.path.join(ROOT, "csrc")])
    if cu:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", os.environ.get("CLOCKWORK_CUDA_ARCHS", "8.0;9.0"))
        ext = cpp_extension.CUDAExtension("clockwork_engine._C", cpp + cu, define_macros=[("CLOCKWORK_CUDA", "1")],
                                          extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "--use_fast_math"]},
                                          **common)
    else:
        ext = cpp_extension.CppExtension("clockwork_engine._C", cpp, extra_compile_args={"cxx": cxx}, **common)
    return [ext], {"build_ext": cpp_extension.BuildExtension}


ext_modules, cmdclass = extensions()

setup(
    packages=find_packages(include=["clockwork_engine", "clockwork_engine.*"]),
    package_data={"clockwork_engine.demo": ["weights/*.json", "weights/*/*.json", "weights/*/*.safetensors",
                                            "weights/clockwork_adaptors/*/*.json",
                                            "weights/clockwork_adaptors/*/*.safetensors",
                                            "weights/students/*/*.json", "weights/students/*/*/*.json",
                                            "weights/students/*/*/*.safetensors",
                                            "weights/loras/*/*.safetensors",
                                            "weights/controlnets/*/*.json", "weights/controlnets/*/*.safetensors",
                                            "weights_sd3/*.json", "weights_sd3/*/*.json", "weights_sd3/*/*.txt",
                                            "weights_sd3/*/*.safetensors", "weights_sd3/clockwork_adaptors/*/*.json",
                                            "weights_sd3/clockwork_adaptors/*/*.safetensors",
                                            "weights_flux/*.json", "weights_flux/*/*.json", "weights_flux/*/*.txt",
                                            "weights_flux/*/*.safetensors", "weights_flux/clockwork_adaptors/*/*.json",
                                            "weights_flux/clockwork_adaptors/*/*.safetensors"],
                  "clockwork_engine.eval": ["weights/*.json", "weights/*.safetensors"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
