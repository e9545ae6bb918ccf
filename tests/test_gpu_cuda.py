"""The CUDA path executed on a GPU (pytest -m gpu; every test here skips without CUDA).

  Triton kernels    compiled for the device (not interpreted) against the fp32 reference,
                    fp32 / fp16 / bf16, odd shapes, both layouts
  CUDA extension    torch.ops.clockwork.group_norm_act's CUDA kernel against the reference
  dispatch          which implementation each public op picks on CUDA tensors
  CUDA graphs       the engine's "cuda" backend on a test-sized SD UNet against the eager
                    step programs on the same GPU (fp32 within 1e-5, fp16 within FP16_TOL);
                    one captured key serving several requests, eviction, no host sync
                    while a captured key samples
  compiled graphs   step programs compiled by inductor, then captured, against the same
                    programs captured uncompiled (COMPILED_TOL)
  out of memory     a request that does not fit fails alone, with DeviceMemoryError; the
                    engine's next request gives the image it gave before

fp32 parity runs with TF32 off (the no_tf32 fixture). The engine follows torch's flags, as
diffusers does; with TF32 on for cuDNN, a fresh capture picked another convolution algorithm
than the eager run and differed by 1.2e-3 (an H200, fp32).

Run as benches/gpu/check.sh runs them, after building the extension with CLOCKWORK_CUDA=1:
    TRITON_INTERPRET=0 python -m pytest -m gpu tests/test_gpu_cuda.py
(conftest.py turns the Triton interpreter on for the CPU tests, and Triton fixes the choice
when a kernel module is first imported.)
"""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
import torch
from conftest import TINY_UNET, TINY_VAE

from clockwork_engine.ops import attention_pv as pv_ops
from clockwork_engine.ops import group_norm as gn_ops
from clockwork_engine.ops.attention_pv import attention_pv_reference
from clockwork_engine.ops.group_norm import group_norm_act_reference

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

# One ulp-scale bound per dtype for outputs rounded from an fp32 result (fp16: 2^-10, bf16: 2^-7).
TOL = {torch.float32: dict(atol=2e-5, rtol=2e-5), torch.float16: dict(atol=1e-3, rtol=1e-3),
       torch.bfloat16: dict(atol=8e-3, rtol=8e-3)}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# Graph replay against the eager programs on the same GPU, fp16 latents (|x| up to ~4): the
# same kernels run in both, so any difference beyond this is a capture bug, not rounding.
FP16_TOL = dict(atol=2e-3, rtol=2e-3)
# Compiled against uncompiled programs: inductor fuses ops and keeps their intermediates in fp32
# where eager kernels round each op's output to fp16, so fp16 latents (|x| up to ~4) may differ
# by a few fp16 ulps (2^-8 at 4) after the steps; fp32 only by reordered sums.
COMPILED_TOL = {"fp32": dict(atol=1e-4, rtol=1e-4), "fp16": dict(atol=2e-2, rtol=2e-2)}

# (shape, groups, layout, operands, act): odd spatial sizes, every optional operand, SD's
# 40960-element groups (both Triton passes loop over chunks), channels-last.
GN_CASES = {
    "odd-7x9": ((1, 32, 7, 9), 8, "nchw", (), "silu"),
    "all-operands-cl-13x11": ((2, 48, 13, 11), 16, "cl", ("scale", "shift", "residual"), "silu"),
    "identity-5x3": ((3, 40, 5, 3), 4, "nchw", ("shift",), "identity"),
    "sd-top-level-64x64": ((2, 320, 64, 64), 32, "nchw", ("shift",), "silu"),
    "sd-low-level-cl-8x8": ((1, 1280, 8, 8), 32, "cl", ("shift", "residual"), "silu"),
}


@pytest.fixture(autouse=True, scope="module")
def no_tf32():
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def gn_inputs(case, dtype, seed=0):
    (B, C, H, W), groups, layout, operands, act = case
    g = torch.Generator().manual_seed(seed)
    fmt = torch.channels_last if layout == "cl" else torch.contiguous_format
    x = (torch.randn(B, C, H, W, generator=g) * 2 + 3).to(dtype).cuda().contiguous(memory_format=fmt)
    return dict(x=x, weight=torch.randn(C, generator=g).cuda(), bias=torch.randn(C, generator=g).cuda(),
                groups=groups, eps=1e-5,
                scale=0.5 * torch.randn(B, C, generator=g).cuda() if "scale" in operands else None,
                shift=torch.randn(B, C, generator=g).cuda() if "shift" in operands else None,
                act=act, residual=torch.randn(B, C, H, W, generator=g).to(dtype).cuda() if "residual" in operands
                else None)


def gn_reference(i):
    """The fp32 reference on the same (rounded) input values."""
    f = {k: v.float() if isinstance(v, torch.Tensor) else v for k, v in i.items()}
    return group_norm_act_reference(**f)


def compiled_kernels():
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.fail("TRITON_INTERPRET=1 runs the Triton kernels in the interpreter; run with TRITON_INTERPRET=0")
    from triton.runtime.jit import JITFunction

    from clockwork_engine.kernels import attention_pv, group_norm

    for kernel in (group_norm._group_norm_act_kernel, attention_pv._attention_pv_kernel):
        assert isinstance(kernel, JITFunction), f"{kernel} is not compiled for the device: {type(kernel).__name__}"
    return group_norm, attention_pv


def cuda_extension():
    if not (gn_ops.extension_available() and gn_ops._extension().built_with_cuda):
        pytest.fail("clockwork_engine._C is not built with CUDA: "
                    "CLOCKWORK_CUDA=1 pip install --no-build-isolation -e .")
    assert torch.ops.clockwork.group_norm_act.default.has_kernel_for_dispatch_key("CUDA")
    return torch.ops.clockwork.group_norm_act


# ----------------------------------------------------------------------------- kernels
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", GN_CASES)
def test_triton_group_norm_compiled_matches_the_fp32_reference(case, dtype):
    group_norm, _ = compiled_kernels()
    i = gn_inputs(GN_CASES[case], DTYPES[dtype])
    y = group_norm.group_norm_act_triton(**i)
    assert y.dtype == i["x"].dtype and y.stride() == i["x"].stride()  # dtype and layout kept
    torch.testing.assert_close(y.float(), gn_reference(i), **TOL[DTYPES[dtype]])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", GN_CASES)
def test_cuda_extension_group_norm_matches_the_fp32_reference(case, dtype):
    op = cuda_extension()
    i = gn_inputs(GN_CASES[case], DTYPES[dtype])
    y = op(i["x"], i["weight"], i["bias"], i["groups"], i["eps"], i["scale"], i["shift"], i["act"], i["residual"])
    assert y.dtype == i["x"].dtype and y.is_cuda
    torch.testing.assert_close(y.float(), gn_reference(i), **TOL[DTYPES[dtype]])


# (G, Nq, Nk, d): text tokens (77), SD's cross-attention at 64x64 and self-attention at 32x32
# (head dim 40 and 80), and sizes that are multiples of no block.
PV_CASES = {"tiny-77": (3, 77, 77, 40), "sd-cross-64x64": (16, 4096, 77, 40), "sd-self-32x32": (16, 1024, 1024, 80),
            "odd": (5, 100, 130, 24)}


def pv_inputs(shape, probs_dtype, value_dtype, seed=0):
    G, Nq, Nk, d = shape
    g = torch.Generator().manual_seed(seed)
    probs = torch.softmax(torch.randn(G, Nq, Nk, generator=g) * 2, -1).to(probs_dtype).cuda()
    return probs, torch.randn(G, Nk, d, generator=g).to(value_dtype).cuda()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", PV_CASES)
def test_triton_attention_pv_compiled_matches_the_fp32_reference(case, dtype):
    _, attention_pv = compiled_kernels()
    probs, value = pv_inputs(PV_CASES[case], DTYPES[dtype], DTYPES[dtype])
    out = attention_pv.attention_pv_triton(probs, value)
    assert out.dtype == value.dtype
    ref = attention_pv_reference(probs.float(), value.float())  # IEEE fp32 (TF32 is off by default)
    torch.testing.assert_close(out.float(), ref, **TOL[DTYPES[dtype]])


def test_triton_attention_pv_mixed_dtypes_and_strided_views():
    _, attention_pv = compiled_kernels()
    probs, value = pv_inputs(PV_CASES["odd"], torch.float16, torch.float32)
    value_t = value.transpose(1, 2).contiguous().transpose(1, 2)  # same values, transposed strides
    probs_slice = torch.cat([probs, probs], 1)[:, : probs.shape[1]]  # a non-contiguous view
    ref = attention_pv_reference(probs.float(), value)
    for p, v in ((probs, value), (probs, value_t), (probs_slice, value)):
        out = attention_pv.attention_pv_triton(p, v)
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, ref, **TOL[torch.float32])


# ----------------------------------------------------------------------------- dispatch
class Spy:
    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.fn(*args, **kwargs)


def test_group_norm_act_dispatch_on_cuda(monkeypatch):
    cuda_extension()
    group_norm, _ = compiled_kernels()
    triton = Spy(group_norm.group_norm_act_triton)
    reference = Spy(group_norm_act_reference)
    monkeypatch.setattr(group_norm, "group_norm_act_triton", triton)
    monkeypatch.setattr(gn_ops, "group_norm_act_reference", reference)
    i = gn_inputs(GN_CASES["all-operands-cl-13x11"], torch.float16)
    expected = gn_reference(i)

    def check(picked):
        torch.testing.assert_close(gn_ops.group_norm_act(**i).float(), expected, **TOL[torch.float16])
        assert (triton.calls, reference.calls) == picked
        triton.calls = reference.calls = 0

    check((0, 0))  # the extension's CUDA kernel
    with monkeypatch.context() as m:  # an extension built without CUDA: the Triton kernel
        m.setattr(gn_ops, "_extension_module", SimpleNamespace(built_with_cuda=False))
        check((1, 0))
    with monkeypatch.context() as m:
        m.setenv("CLOCKWORK_DISABLE_EXT", "1")
        check((0, 1))
    i["x"] = i["x"].detach().requires_grad_()  # autograd must record the op: the reference
    with torch.enable_grad():
        gn_ops.group_norm_act(**i).float().sum().backward()
    assert reference.calls == 1 and i["x"].grad is not None


def test_attention_pv_dispatch_on_cuda(monkeypatch):
    _, attention_pv = compiled_kernels()
    triton = Spy(attention_pv.attention_pv_triton)
    monkeypatch.setattr(attention_pv, "attention_pv_triton", triton)
    probs, value = pv_inputs(PV_CASES["tiny-77"], torch.float16, torch.float16)
    torch.testing.assert_close(pv_ops.attention_pv(probs, value), attention_pv_reference(probs, value),
                               **TOL[torch.float16])
    pv_ops.attention_pv(probs.cpu(), value.cpu())  # CPU tensors: torch.bmm
    assert triton.calls == 1


# ----------------------------------------------------------------------------- CUDA graphs
GOOD = dict(steps=5, seed=0, height=16, width=16, output="latent", guidance_scale=4.0)
PROMPTS = ["a red circle", "a blue square"]


def tiny_pipe(folder, dtype):
    """A test-sized SD pipeline on the GPU (a CLIP tokenizer built in code: no package model)."""
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from test_standard_dirs import clip_tokenizer
    from transformers import CLIPTextConfig, CLIPTextModel

    from clockwork_engine.demo.models import build_scheduler

    torch.manual_seed(0)
    tokenizer = clip_tokenizer(folder)
    text = CLIPTextModel(CLIPTextConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                                        num_attention_heads=4, vocab_size=len(tokenizer), max_position_embeddings=16))
    pipe = StableDiffusionPipeline(vae=AutoencoderKL(**TINY_VAE), text_encoder=text.eval(), tokenizer=tokenizer,
                                   unet=UNet2DConditionModel(**TINY_UNET), scheduler=build_scheduler(),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    return pipe.to("cuda", dtype)


@pytest.fixture(scope="module")
def pipes(tmp_path_factory):
    return {name: tiny_pipe(tmp_path_factory.mktemp(name), dtype)
            for name, dtype in (("fp32", torch.float32), ("fp16", torch.float16))}


def random_adaptor(pipe, folder) -> str:
    """An adaptor folder for the pipe's UNet with random weights everywhere (the output layer
    too: a trained adaptor's output is not zero), so its fused GroupNorms change the result."""
    from clockwork_engine.clockwork import adaptors as A
    from clockwork_engine.clockwork.unet_split import UNetSplit
    from clockwork_engine.sampler import noise_schedulers

    torch.manual_seed(1)
    adaptor = A.Adaptor(A.AdaptorConfig.for_split(UNetSplit(pipe.unet, 1), 16))
    torch.nn.init.normal_(adaptor.up.weight, std=0.05)
    A.save(str(folder), adaptor, cut=1, base_fingerprint=A.model_fingerprint(pipe.unet),
           scheduler=noise_schedulers.describe(pipe.scheduler), steps=GOOD["steps"],
           clock={"every": 2, "adaptor_steps": None})
    return str(folder)


def graphs_and_eager(pipe, **config):
    from clockwork_engine import Engine, EngineConfig

    config = {"compile": False, **config}  # capture is tested here; compiled programs by their own tests
    graphs = Engine.from_pipeline(pipe, config=EngineConfig(backend="cuda", **config))
    return graphs, graphs.with_config(backend="cpu")  # the same step programs, eagerly, on the GPU


def assert_captured(engine):
    from clockwork_engine.sampler.graphs import _CudaGraphProgram

    assert engine.graphs.backend == "cuda" and engine.graphs.pool is not None
    programs = [p for key in engine.graphs.keys() for p in engine.graphs.programs(key).values()]
    assert programs and all(isinstance(p, _CudaGraphProgram) for p in programs)


VARIANTS = {
    "full": dict(mode="full"),
    "clockwork-identity": dict(mode="clockwork", adaptor="identity"),
    "clockwork-adaptor": dict(mode="clockwork"),  # random_adaptor: the CUDA extension inside the graph
    "clockwork-reuse": dict(mode="clockwork", adaptor="identity", attention_reuse=(3, 4)),  # Triton P.V inside
    "euler-a": dict(mode="full", scheduler="euler-a"),  # pre-drawn noise terms in the static buffers
}


@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_graph_replay_equals_the_eager_programs(pipes, dtype, variant, tmp_path):
    pipe = pipes[dtype]
    config = dict(VARIANTS[variant])
    if variant == "clockwork-adaptor":
        config["adaptor"] = random_adaptor(pipe, tmp_path / "adaptor")
    graphs, eager = graphs_and_eager(pipe, **config)
    got = graphs.generate(PROMPTS, **GOOD)
    assert_captured(graphs)
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == "fp32" else FP16_TOL
    torch.testing.assert_close(got, eager.generate(PROMPTS, **GOOD), **tol)
    assert got.abs().max() > 0.1  # a real sample, not a zeroed buffer


def test_one_captured_key_serves_many_requests(pipes):
    graphs, eager = graphs_and_eager(pipes["fp32"], mode="clockwork", adaptor="identity")
    other = {**GOOD, "seed": 3, "guidance_scale": 7.0}
    first = graphs.generate("a red circle", **GOOD)
    second = graphs.generate("a blue square", **other)
    with pytest.raises(RuntimeError, match="stop"):  # a request cancelled mid-way leaves nothing behind
        graphs.generate("a circle", **GOOD, callback=lambda i, n, x: (_ for _ in ()).throw(RuntimeError("stop")))
    again = graphs.generate("a red circle", **GOOD)
    assert (graphs.graphs.misses, graphs.graphs.hits) == (1, 3)
    torch.testing.assert_close(again, first, rtol=0, atol=0)  # every buffer reset between requests
    torch.testing.assert_close(second, eager.generate("a blue square", **other), atol=1e-5, rtol=1e-5)
    assert (first - second).abs().max() > 0.1  # the second request's text, seed and guidance reached the graph


def test_eviction_recaptures_and_stays_correct(pipes):
    graphs, eager = graphs_and_eager(pipes["fp32"], mode="full", max_graphs=1)
    sizes = (16, 32, 16)
    got = [graphs.generate("a red circle", **{**GOOD, "height": s, "width": s}) for s in sizes]
    assert (graphs.graphs.misses, graphs.graphs.evictions, len(graphs.graphs.keys())) == (3, 2, 1)
    for s, g in zip(sizes, got, strict=True):
        torch.testing.assert_close(g, eager.generate("a red circle", **{**GOOD, "height": s, "width": s}),
                                   atol=1e-5, rtol=1e-5)


def test_no_host_sync_while_a_captured_key_samples(pipes):
    graphs, _ = graphs_and_eager(pipes["fp16"], mode="clockwork", adaptor="identity", attention_reuse=(3,))
    graphs.generate("a red circle", **GOOD)  # captures (capture itself synchronises)
    sampler, run = graphs.graphs, graphs.graphs.run

    def strict_run(*args, **kwargs):
        torch.cuda.set_sync_debug_mode("error")
        try:
            return run(*args, **kwargs)
        finally:
            torch.cuda.set_sync_debug_mode("default")

    sampler.run = strict_run
    graphs.generate("a blue square", **{**GOOD, "seed": 4})
    assert sampler.hits == 1
    torch.cuda.set_sync_debug_mode("error")  # the mode does catch a sync
    try:
        with pytest.raises(RuntimeError, match="synchroniz"):
            torch.ones(1, device="cuda").item()
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_continuous_batching_on_cuda_graphs(pipes):
    """Lanes of the request scheduler capture their bucket programs as CUDA graphs; rows that
    join together and mid-flight get the request-alone latents."""
    import threading

    from clockwork_engine import request as requests
    from clockwork_engine.sampler.graphs import _CudaGraphProgram

    alone, _ = graphs_and_eager(pipes["fp32"], mode="clockwork", adaptor="identity")
    batched = alone.with_config(batching="step")
    calls = [dict(GOOD, seed=s, steps=n) for s, n in ((1, 4), (2, 6), (3, 4), (4, 8))]
    want = [alone.generate("a red circle", **c) for c in calls]
    late, joined = [], threading.Event()

    def join_late(rows):
        if not joined.is_set():
            joined.set()
            late.extend(batched.batcher.submit(requests.parse(batched, "a red circle", **c)) for c in calls[2:])

    batched.batcher.tick_hooks.append(join_late)
    first = [batched.batcher.submit(requests.parse(batched, "a red circle", **c)) for c in calls[:2]]
    got = [f.result(timeout=300) for f in first]
    joined.wait(timeout=300)
    got += [f.result(timeout=300) for f in late]
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, atol=1e-4, rtol=1e-4)
    programs = [p for lane in batched.batcher.lanes().values() for p in lane.programs()]
    assert programs and all(isinstance(p, _CudaGraphProgram) for p in programs)


@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
@pytest.mark.parametrize("variant", ["full", "clockwork-identity"])
def test_compiled_programs_match_the_uncompiled(pipes, dtype, variant):
    from clockwork_engine import Engine, EngineConfig

    compiled = Engine.from_pipeline(pipes[dtype], config=EngineConfig(backend="cuda", **VARIANTS[variant]))
    assert compiled.graphs.cuda_compile is not None  # compile is the cuda backend's default
    got = compiled.generate(PROMPTS, **GOOD)
    assert_captured(compiled)
    torch.testing.assert_close(got, compiled.with_config(compile=False).generate(PROMPTS, **GOOD),
                               **COMPILED_TOL[dtype])
    again = compiled.generate(PROMPTS, **GOOD)  # the captured compiled programs replay exactly
    torch.testing.assert_close(again, got, rtol=0, atol=0)


def test_a_request_out_of_device_memory_fails_alone(pipes):
    from clockwork_engine import request as requests

    graphs, _ = graphs_and_eager(pipes["fp16"], mode="full")
    before = graphs.generate("a red circle", **GOOD)
    big = graphs.with_config(max_size_factor=64)
    _, total = torch.cuda.mem_get_info()
    # The process may hold 256 MiB more than it has reserved now: a 4-image 2048x2048 request's
    # activations need far more.
    torch.cuda.set_per_process_memory_fraction((torch.cuda.memory_reserved() + 2**28) / total)
    try:
        with pytest.raises(requests.DeviceMemoryError, match="4 image.*2048x2048.*does not fit"):
            big.generate(["a red circle"] * 4, **{**GOOD, "height": 2048, "width": 2048})
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
    assert big.graphs.keys() == []  # nothing of the failed key is kept
    torch.testing.assert_close(graphs.generate("a red circle", **GOOD), before, rtol=0, atol=0)
