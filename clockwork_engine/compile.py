"""TorchInductor compilation: the inductor backend (CPU) and the compiled CUDA-graph backend.

Step programs are compiled as one whole graph per program and request shape. On the CPU
(backend "inductor") the weights are frozen in as constants (constant folding, oneDNN weight
prepacking) and kernels are called from a C++ wrapper. On CUDA (backend "cuda", compile on)
inductor writes Triton kernels for the step function and the engine captures the compiled
function as a CUDA graph, so neither Python nor inductor's wrapper runs between kernels; the
option set is EngineConfig.inductor (CUDA_OPTIONS below, each one measured by the GPU check's
`options` phase).
The text encoder and the image decoders are compiled with dynamic=None: the first shape
compiles static, a second one compiles a graph for any batch. (Probe, demo, CPU, batch 1: the
VAE decode took 7.3 ms eager, 5.9 compiled without freezing, 4.5 with it, 4.4 with the C++
wrapper too.)

Compiled code outlives the process in inductor's on-disk caches; `clockwork compile` bundles
what a model's request shapes need into artifacts (artifacts.py) that an engine loads at start.
"""

from __future__ import annotations

import threading

import torch

STEP_OPTIONS = {"freezing": True, "cpp_wrapper": True}
MODULE_OPTIONS = {"freezing": True}
# CUDA step programs (EngineConfig.inductor): inductor's option sets, by name. Freezing is off by
# default there: the graphs of a key share the UNet's weights instead of holding frozen copies.
CUDA_OPTIONS = {
    "default": {},
    "coordinate-descent": {"coordinate_descent_tuning": True},
    "freezing": {"freezing": True},
    "max-autotune": {"max_autotune": True},
}
CUDA_MODULE_OPTIONS = {}

HINT = ("Compiling on a CPU needs a working C++ compiler; backend='cpu' (on a GPU: compile=False) runs the same "
        "code uncompiled")


# torch._inductor.config is process-global: one compiled call at a time sets and restores its
# `freezing` flag, so threads cannot leave it changed for other torch.compile users.
_CONFIG_LOCK = threading.RLock()


class InductorError(RuntimeError):
    """A compiled function failed (to compile, mostly: no working C++ compiler)."""


def compiled(fn, options: dict, what: str, dynamic: bool | None = False):
    """fn compiled as one graph; an exception in it becomes an InductorError naming `what`
    (torch.OutOfMemoryError passes through: the caller reports the request that did not fit)."""

    def call(*args):
        return fn(*args)

    # Dynamo keeps compiled code on the code object of the frame it compiles: a code object
    # of its own per function keeps them apart (no recompile limit shared by every program).
    call.__code__ = call.__code__.replace()
    # No guards on module attributes: the weights are frozen in at the first call anyway (the
    # backend's contract: they must not change after it), and checking the guards of every
    # UNet parameter took 0.75 ms per step call in a probe. Guards on the inputs stay.
    options = {**options, "guard_filter_fn": torch.compiler.skip_guard_on_all_nn_modules_unsafe}
    compiled_call = torch.compile(call, dynamic=dynamic, fullgraph=True, options=options)
    # Dynamo decides whether parameters become constants from the global flag when it traces:
    # `freezing` in the options alone left the weights as graph inputs (no folding, no oneDNN
    # prepacking; every conv ran ATen's batch-1 im2col path).
    freezing = options.get("freezing", False)

    def run(*args):
        try:
            with _CONFIG_LOCK, torch._inductor.config.patch(freezing=freezing):
                return compiled_call(*args)
        except torch.OutOfMemoryError:
            raise
        except Exception as e:
            raise InductorError(f"the inductor backend failed on the {what} ({type(e).__name__}: {str(e)[:300]}). "
                                f"{HINT}") from e

    return run


def cuda_options(name: str) -> dict:
    if name not in CUDA_OPTIONS:
        raise ValueError(f"inductor must be one of {', '.join(CUDA_OPTIONS)}, got {name!r}")
    return CUDA_OPTIONS[name]
