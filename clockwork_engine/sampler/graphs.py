"""The graph sampler: each step kind runs as a program over static buffers.

All state of a request lives in static buffers (latents, the solver's history window,
pre-drawn noise terms, cached r_out, text, per-row guidance, step index). A step program
reads them and writes the new state back in place, so a CUDA graph captured from it can be
replayed step after step; the full program writes r_out into the buffer the adaptor program
reads. The host only picks, from the step index, which program to replay and copies the
index in.

Backends:
  cpu   the programs run eagerly (same functions, same buffers); their first run per key
        is checked by the NoHostSync guard.
  cuda  each program's step function compiled by TorchInductor (Triton kernels; compile
        options from ../compile.py, or uncompiled with EngineConfig(compile=False)), warmed
        up on a side stream, captured with torch.cuda.CUDAGraph into one memory pool shared
        by all graphs, replayed. Run on an H200 by benches/gpu/check.sh
        (tests/test_gpu_cuda.py: replay equals the eager programs).
  inductor  the CPU analogue of capture: each program's step function is compiled once by
        TorchInductor (../compile.py: one whole graph, weights frozen in as constants, a
        C++ wrapper instead of Python between kernels), then called per step. Compiling
        takes tens of seconds per program (the first request of a key); after that no
        Python runs inside a step. Needs a C++ compiler at run time. Each new key compiled
        grew the resident memory by 6-23 MB in a probe (7 keys with max_entries=1, so
        evicted programs too): serve a bounded set of shapes.
A program set that runs out of device memory while it is compiled or captured is dropped
whole (torch.OutOfMemoryError goes to the caller, the pool's blocks back to the allocator).
One (full, adaptor) program set per key (batch, height, width, dtype, mode, cfg, steps),
kept in an LRU of `max_entries`.
"""

from __future__ import annotations

import gc
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from clockwork_engine.clockwork.cache import CacheState
from clockwork_engine.compile import STEP_OPTIONS, compiled
from clockwork_engine.sampler.guard import NoHostSync
from clockwork_engine.sampler.solver import SolverTable

# make_steps(buffers) -> {kind: step_fn}; step_fn(i, x, history, features) -> (x_next, history, features)
# with text, guidance, noise terms, edit inputs and attention maps bound to the static buffers.
StepFactory = Callable[["StaticBuffers"], dict]


@dataclass
class RequestInputs:
    """One request's tensors, copied into the static buffers before its steps run."""

    latents: torch.Tensor  # [B, C, h, w] float32: x_0 (solver.SolverTable.initial)
    text: torch.Tensor  # [B', L, D]
    guidance: torch.Tensor  # [B] float32, one scale a row
    noise: torch.Tensor | None = None  # [E, B, C, h, w] float32 noise terms of a stochastic scheduler
    extra: torch.Tensor | None = None  # [B, C_x, h, w] 9-channel inpainting: mask and masked-image latents
    mask: torch.Tensor | None = None  # [B, 1, h, w] 4-channel inpainting: 1 where the prompt repaints
    kept: torch.Tensor | None = None  # [E, B, C, h, w] float32 4-channel inpainting: what stays outside the mask
    # The family's added conditioning, name -> [B', ...] (SDXL: text_embeds, time_ids; SD3:
    # pooled_projections), or None.
    added: dict[str, torch.Tensor] | None = None


_OPTIONAL = ("noise", "extra", "mask", "kept")


@dataclass
class StaticBuffers:
    step: torch.Tensor  # [] int64, the step index
    x: torch.Tensor  # [B, C, h, w] float32
    history: torch.Tensor  # [K, V, B, C, h, w] float32, the solver's window (solver.py)
    features: torch.Tensor | None  # [B', C_r, h_r, w_r] cached r_out, or None without clockwork
    text: torch.Tensor  # [B', L, D]
    guidance: torch.Tensor  # [B] float32
    noise: torch.Tensor | None = None  # RequestInputs' optional tensors, each as there
    extra: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    kept: torch.Tensor | None = None
    added: dict[str, torch.Tensor] | None = None
    maps: dict = field(default_factory=dict)  # attention maps of the request (layer -> tensor)

    @property
    def blend(self):
        """(mask, kept) for 4-channel inpainting's latent blend, else None."""
        return None if self.mask is None else (self.mask, self.kept)


def _range(name: str):
    """A torch.profiler range, and an NVTX range when CUDA is there (the same name)."""
    if torch.cuda.is_available():
        class _Both:
            def __enter__(self):
                torch.cuda.nvtx.range_push(name)
                self.rf = torch.profiler.record_function(name)
                self.rf.__enter__()

            def __exit__(self, *exc):
                self.rf.__exit__(*exc)
                torch.cuda.nvtx.range_pop()

        return _Both()
    return torch.profiler.record_function(name)


BACKENDS = ("cpu", "cuda", "inductor")


class _Program:
    """One step kind bound to the static buffers: run() updates them in place."""

    def __init__(self, step_fn, bufs: StaticBuffers):
        self.step_fn, self.bufs = step_fn, bufs

    def run(self):
        b = self.bufs
        x, history, features = self.step_fn(b.step, b.x, b.history, b.features)
        b.x.copy_(x)
        b.history.copy_(history)
        if b.features is not None and features is not None:
            b.features.copy_(features)


class _CudaGraphProgram(_Program):
    def __init__(self, step_fn, bufs, pool, stream):
        super().__init__(step_fn, bufs)
        stream.wait_stream(torch.cuda.current_stream())  # the buffers were just written on the default stream
        with torch.cuda.stream(stream):  # warm-up off the default stream, as capture requires
            for _ in range(2):
                super().run()
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, pool=pool):
            super().run()

    def run(self):
        self.graph.replay()


class _CompiledProgram(_Program):
    def __init__(self, kind, step_fn, bufs):
        super().__init__(compiled(step_fn, STEP_OPTIONS, f"step program {kind!r}"), bufs)


class _Entry:
    def __init__(self, bufs: StaticBuffers, programs: dict):
        self.bufs, self.programs = bufs, programs


def build_programs(backend: str, pool, step_fns: dict, bufs: StaticBuffers, kinds, text: torch.Tensor,
                   cuda_compile: dict | None = None) -> dict:
    """{kind: program} over the buffers: CUDA graphs captured (of the step functions compiled
    with inductor options `cuda_compile`, or uncompiled where it is None), or eager programs
    whose first run is checked for host syncs (compiled by inductor after it). text: what
    bufs.text holds during warm-up. The programs' dry runs leave garbage in the buffers: reset
    them before sampling."""
    # Programs that compute attention maps run first: their warm-up allocates the map
    # buffers the reuse programs read.
    kinds = sorted(kinds, key=lambda k: (k.endswith("+reuse"), k))
    programs = {}
    if backend == "cuda":
        stream = torch.cuda.Stream()
        bufs.text.copy_(text)
        for kind in kinds:
            fn = step_fns[kind]
            if cuda_compile is not None:  # compiled in the first warm-up run, captured after it
                fn = compiled(fn, cuda_compile, f"step program {kind!r}")
            programs[kind] = _CudaGraphProgram(fn, bufs, pool, stream)
        return programs
    for kind in kinds:
        programs[kind] = _Program(step_fns[kind], bufs)
        bufs.text.copy_(text)
        bufs.step.fill_(0)  # a dry run at evaluation 0
        with NoHostSync():  # fail now, not on a GPU, if a step syncs with the host
            programs[kind].run()
        if backend == "inductor":  # compile now; an error keeps nothing of this key
            programs[kind] = _CompiledProgram(kind, step_fns[kind], bufs)
            programs[kind].run()
    return programs


def release_device_memory():
    """Blocks of dropped tensors and graphs back to the device (after an out-of-memory error)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class GraphSampler:
    def __init__(self, backend: str = "auto", max_entries: int = 8, cuda_compile: dict | None = None):
        """cuda_compile: the cuda backend's inductor options (None: capture uncompiled programs)."""
        if backend == "auto":
            backend = "cuda" if torch.cuda.is_available() else "cpu"
        if backend not in BACKENDS:
            raise ValueError(f"backend must be 'auto' or one of {', '.join(BACKENDS)}, got {backend!r}")
        if backend == "cuda" and not torch.cuda.is_available():
            raise ValueError("backend 'cuda' needs a CUDA device")
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        self.backend = backend
        self.cuda_compile = cuda_compile if backend == "cuda" else None
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple, _Entry] = OrderedDict()
        self.pool = torch.cuda.graph_pool_handle() if backend == "cuda" else None
        self.hits = self.misses = self.evictions = 0

    def keys(self) -> list[tuple]:
        return list(self._entries)

    def programs(self, key: tuple) -> dict:
        """{kind: program} of a key's program set (a bench times one program's replay)."""
        return self._entries[key].programs

    def clear(self):
        self._entries.clear()

    @property
    def weights_frozen(self) -> bool:
        """The compiled programs hold the weights as constants (the inductor backend, or CUDA
        programs compiled with freezing): a change of the weights in place does not reach them."""
        return self.backend == "inductor" or bool((self.cuda_compile or {}).get("freezing"))

    def build(self, step_fns: dict, bufs: StaticBuffers, kinds, text: torch.Tensor) -> dict:
        """build_programs with this sampler's backend, pool and compile options; a set that ran
        out of device memory is freed before the error goes on."""
        failed = False
        try:
            return build_programs(self.backend, self.pool, step_fns, bufs, kinds, text, self.cuda_compile)
        except torch.OutOfMemoryError:
            failed = True  # handled below, once the traceback (and the tensors it holds) is gone
        if failed:
            release_device_memory()
            raise torch.OutOfMemoryError("out of device memory while building the step programs")

    def _build(self, make_steps: StepFactory, kinds: set[str], table: SolverTable, inputs: RequestInputs,
               feature_shape) -> _Entry:
        latents, text = inputs.latents, inputs.text
        device = latents.device
        optional = {name: None if getattr(inputs, name) is None else torch.zeros_like(getattr(inputs, name))
                    for name in _OPTIONAL}
        bufs = StaticBuffers(
            step=torch.zeros((), dtype=torch.long, device=device),
            x=torch.zeros(latents.shape, dtype=torch.float32, device=device),
            history=table.empty_history(latents),
            features=torch.zeros(feature_shape, dtype=text.dtype, device=device) if feature_shape else None,
            text=torch.zeros_like(text),
            guidance=torch.zeros(latents.shape[0], dtype=torch.float32, device=device),
            added=None if inputs.added is None else {k: torch.zeros_like(v) for k, v in inputs.added.items()},
            **optional,
        )
        return _Entry(bufs, self.build(make_steps(bufs), bufs, kinds, text))

    def run(self, key: tuple, make_steps: StepFactory, kinds: list[str], table: SolverTable, inputs: RequestInputs,
            feature_shape: tuple | None, cache: CacheState, callback=None) -> torch.Tensor:
        """Sample x_E for one request; the key must fix which optional inputs it has. Returns a
        fresh tensor (the buffers stay the sampler's)."""
        if len(kinds) != table.num_steps:
            raise ValueError(f"schedule has {len(kinds)} entries for {table.num_steps} steps")
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            entry = self._build(make_steps, set(kinds), table, inputs, feature_shape)
            self._entries[key] = entry
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
                self.evictions += 1
        else:
            self.hits += 1
            self._entries.move_to_end(key)
        b = entry.bufs
        # Reset every buffer: nothing of an earlier request (or of the guard run) survives.
        b.x.copy_(inputs.latents)
        b.history.zero_()
        for name in _OPTIONAL:
            if getattr(b, name) is not None:
                getattr(b, name).copy_(getattr(inputs, name))
        for name, buf in (b.added or {}).items():
            buf.copy_(inputs.added[name])
        if b.features is not None:
            b.features.zero_()
        b.text.copy_(inputs.text)
        b.guidance.copy_(inputs.guidance)
        indices = torch.arange(table.num_steps, device=b.x.device)
        with _range("clockwork.sample"):
            for i, kind in enumerate(kinds):
                with _range(f"clockwork.step.{i}.{kind}"):
                    b.step.copy_(indices[i])
                    entry.programs[kind].run()
                if callback is not None:
                    callback(i, table.num_steps, b.x)
        cache.r_out = None if b.features is None else b.features.clone()
        return b.x.clone()
