"""Microbenchmark of the fused GroupNorm -> +shift -> SiLU (group_norm_act) per provider and shape.

    OMP_NUM_THREADS=1 python -m pytest benches/bench_kernels.py --benchmark-json benches/results/kernels.json \
        -q --benchmark-min-rounds=3 --benchmark-max-time=0.5

pytest-benchmark, run explicitly (benches/ is outside testpaths). Each shape is one benchmark
group; every provider after "eager" records extra_info["speedup_vs_eager"] (median over median).
Providers: eager (the torch reference), cpp (torch.ops.clockwork, the C++ extension),
compiled (torch.compile of the reference), triton and cuda-ext (CUDA only; skipped without a GPU).
Target on CPU: cpp >= 2x eager.
"""

from __future__ import annotations

import pytest
import torch

from clockwork_engine.ops import extension_available
from clockwork_engine.ops.group_norm import group_norm_act_reference

# name -> ([B, C, H, W], groups): the demo adaptor's blocks and SD v1.5's ResNet levels
SHAPES = {
    "demo-2x64x8x8": ((2, 64, 8, 8), 32),
    "demo-2x96x4x4": ((2, 96, 4, 4), 32),
    "sd-2x320x64x64": ((2, 320, 64, 64), 32),
    "sd-2x640x32x32": ((2, 640, 32, 32), 32),
    "sd-2x1280x16x16": ((2, 1280, 16, 16), 32),
}
PROVIDERS = ["eager", "cpp", "compiled", "triton", "cuda-ext"]  # eager first: the others divide by it
_eager_median: dict[str, float] = {}


def make_inputs(shape, device):
    g = torch.Generator().manual_seed(0)
    B, C = shape[:2]
    tensors = dict(x=torch.randn(shape, generator=g), weight=torch.randn(C, generator=g),
                   bias=torch.randn(C, generator=g), shift=torch.randn(B, C, generator=g))
    return {k: v.to(device) for k, v in tensors.items()}


def provider_fn(provider, groups):
    """(device, fn(x, weight, bias, shift)) or a skip."""
    cuda = torch.cuda.is_available()
    if provider == "eager":
        return "cpu", lambda x, w, b, s: group_norm_act_reference(x, w, b, groups, shift=s)
    if provider == "cpp":
        if not extension_available():
            pytest.skip("C++ extension not built")
        return "cpu", lambda x, w, b, s: torch.ops.clockwork.group_norm_act(x, w, b, groups, 1e-5, None, s, "silu",
                                                                            None)
    if provider == "compiled":
        compiled = torch.compile(lambda x, w, b, s: group_norm_act_reference(x, w, b, groups, shift=s))
        return "cpu", compiled
    if provider == "triton":
        if not cuda:
            pytest.skip("Triton kernel benchmark needs a CUDA device")
        from clockwork_engine.kernels.group_norm import group_norm_act_triton

        return "cuda", lambda x, w, b, s: group_norm_act_triton(x, w, b, groups, shift=s)
    cuda_kernel = extension_available() and torch.ops.clockwork.group_norm_act.default.has_kernel_for_dispatch_key(
        "CUDA")
    if not (cuda and cuda_kernel):
        pytest.skip("CUDA kernel benchmark needs a CUDA device and the extension built with CUDA")
    return "cuda", lambda x, w, b, s: torch.ops.clockwork.group_norm_act(x, w, b, groups, 1e-5, None, s, "silu", None)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("shape_name", list(SHAPES))
def test_group_norm_shift_silu(benchmark, shape_name, provider):
    shape, groups = SHAPES[shape_name]
    device, fn = provider_fn(provider, groups)
    i = make_inputs(shape, device)
    args = (i["x"], i["weight"], i["bias"], i["shift"])
    with torch.no_grad():
        try:
            y = fn(*args)  # also the warm-up: compiles / loads before timing
        except Exception as e:  # torch.compile on CPU needs a working C++ toolchain
            if provider != "compiled":
                raise
            pytest.skip(f"torch.compile failed: {type(e).__name__}: {e}")
        expected = group_norm_act_reference(*args[:3], groups, shift=args[3])
        torch.testing.assert_close(y, expected, atol=1e-4, rtol=1e-4)  # benchmark only correct kernels

        benchmark.group = shape_name
        benchmark.extra_info.update(shape=list(shape), groups=groups, threads=torch.get_num_threads())
        if device == "cuda":
            benchmark(lambda: (fn(*args), torch.cuda.synchronize()))
        else:
            benchmark(fn, *args)
    if benchmark.stats is None:  # --benchmark-disable: a correctness-only pass
        return
    median = benchmark.stats.stats.median
    if provider == "eager":
        _eager_median[shape_name] = median
    elif shape_name in _eager_median and device == "cpu":
        benchmark.extra_info["speedup_vs_eager"] = _eager_median[shape_name] / median
