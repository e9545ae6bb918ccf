"""clockwork::group_norm_act (the C++ CPU kernel) against the torch reference: numerics over odd
shapes, both layouts, three dtypes and every optional operand; input checks; fake/meta shape
propagation; torch.compile; and which path group_norm_act dispatches to."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode

from clockwork_engine.ops import extension_available, group_norm_act
from clockwork_engine.ops.group_norm import group_norm_act_reference

needs_extension = pytest.mark.skipif(
    not extension_available(),
    reason="C++ extension clockwork_engine._C is not built (pip install --no-build-isolation -e .)")

# Kernel output vs the fp32 reference on the (upcast) same inputs: fp32 differs by rounding in the
# statistics and the folded affine; fp16/bf16 mostly by the final rounding of y (half an ulp).
TOLERANCES = {torch.float32: dict(atol=2e-5, rtol=2e-5), torch.float16: dict(atol=2e-3, rtol=2e-3),
              torch.bfloat16: dict(atol=1.6e-2, rtol=1.6e-2)}
SMALL_SHAPES = [((1, 1280, 8, 8), 32), ((3, 96, 7, 9), 32), ((2, 64, 5, 5), 8)]  # [B, C, H, W], groups
OPERANDS = list(itertools.product([False, True], repeat=3))  # (scale, shift, residual)


def make_inputs(shape, dtype, channels_last, scale, shift, residual, seed=0):
    g = torch.Generator().manual_seed(seed)
    B, C = shape[:2]
    # mean 3, std 2: the statistics must not rely on the data being centred
    x = (torch.randn(shape, generator=g) * 2 + 3).to(dtype)
    res = torch.randn(shape, generator=g).to(dtype) if residual else None
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
        res = res.to(memory_format=torch.channels_last) if residual else None
    return dict(x=x, weight=torch.randn(C, generator=g), bias=torch.randn(C, generator=g),
                scale=0.5 * torch.randn(B, C, generator=g) if scale else None,
                shift=torch.randn(B, C, generator=g) if shift else None, residual=res)


def op(inputs, groups, act, eps=1e-5):
    i = inputs
    return torch.ops.clockwork.group_norm_act(i["x"], i["weight"], i["bias"], groups, eps, i["scale"], i["shift"],
                                              act, i["residual"])


def reference_fp32(inputs, groups, act, eps=1e-5):
    i = {k: None if v is None else v.float() for k, v in inputs.items()}
    return group_norm_act_reference(i["x"], i["weight"], i["bias"], groups, eps, i["scale"], i["shift"], act,
                                     i["residual"])


def check_parity(shape, groups, dtype, channels_last, operands, act):
    inputs = make_inputs(shape, dtype, channels_last, *operands)
    y = op(inputs, groups, act)
    assert y.dtype == dtype and y.shape == inputs["x"].shape
    layout = torch.channels_last if channels_last else torch.contiguous_format
    assert y.is_contiguous(memory_format=layout)
    torch.testing.assert_close(y.float(), reference_fp32(inputs, groups, act), **TOLERANCES[dtype])


@needs_extension
@pytest.mark.parametrize("act", ["identity", "silu"])
@pytest.mark.parametrize("operands", OPERANDS, ids=lambda o: "scale{}-shift{}-res{}".format(*map(int, o)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
@pytest.mark.parametrize("shape,groups", SMALL_SHAPES, ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple)
                         else f"g{v}")
def test_parity_small_shapes(shape, groups, channels_last, dtype, operands, act):
    check_parity(shape, groups, dtype, channels_last, operands, act)


@needs_extension
@pytest.mark.parametrize("dtype,channels_last,operands,act", [
    (torch.float32, False, (False, False, False), "identity"),
    (torch.float32, False, (False, True, False), "silu"),
    (torch.float32, True, (True, True, True), "silu"),
    (torch.float16, False, (False, True, False), "silu"),
])
def test_parity_sd_shape(dtype, channels_last, operands, act):
    check_parity((2, 320, 64, 64), 32, dtype, channels_last, operands, act)


@needs_extension
def test_statistics_survive_a_large_offset():
    # mean 1e4, std 1: fp32 E[x^2] - E[x]^2 would lose the variance entirely (ulp(1e8) = 8). What is
    # left is fp32's own limit: x and its mean are held to ulp(1e4) ~ 1e-3 std.
    inputs = make_inputs((2, 64, 5, 5), torch.float32, False, False, False, False)
    x, weight, bias = inputs["x"] * 0.5 + 1e4, inputs["weight"], inputs["bias"]
    inputs["x"] = x
    truth = F.silu(F.group_norm(x.double(), 8, weight.double(), bias.double(), 1e-5))
    torch.testing.assert_close(op(inputs, 8, "silu"), truth.float(), atol=2e-3, rtol=1e-3)


@needs_extension
@pytest.mark.parametrize("make_strided", [
    lambda x: x.permute(0, 2, 1, 3).contiguous().permute(0, 2, 1, 3),  # dense, neither NCHW nor channels-last
    lambda x: torch.cat([x, x], dim=3)[..., ::2],  # not dense
], ids=["dense-permuted", "strided-view"])
def test_other_strides_give_nchw_output_matching_fake(make_strided):
    inputs = make_inputs((2, 64, 5, 5), torch.float32, False, True, True, True)
    inputs["x"] = make_strided(inputs["x"])
    y = op(inputs, 8, "silu")
    torch.testing.assert_close(y, reference_fp32(inputs, 8, "silu"), **TOLERANCES[torch.float32])
    with FakeTensorMode() as mode:
        fake = op({k: None if v is None else mode.from_tensor(v) for k, v in inputs.items()}, 8, "silu")
    assert y.is_contiguous() and fake.stride() == y.stride()


@needs_extension
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_16bit_loads_and_stores_round_like_torch(dtype):
    # weight = 0 makes a = bias[c] exactly. Stores: bias = random fp32 bit patterns (every exponent,
    # ties, subnormal results, overflow, inf, NaN) must round to what torch's .to(dtype) gives.
    # Loads: with bias = 0, y = residual must survive the fp32 round trip for all 65536 16-bit words.
    words = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16).view(dtype)
    C = words.numel()
    patterns = torch.randint(-2**31, 2**31, (C,), generator=torch.Generator().manual_seed(0)).to(torch.int32)
    bias = patterns.view(torch.float32)
    x, zeros = torch.zeros(1, C, 1, 1, dtype=dtype), torch.zeros(C)
    stored = torch.ops.clockwork.group_norm_act(x, zeros, bias, 1, 1e-5, None, None, "identity", None)
    torch.testing.assert_close(stored.flatten(), bias.to(dtype), atol=0, rtol=0, equal_nan=True)
    loaded = torch.ops.clockwork.group_norm_act(x, zeros, zeros, 1, 1e-5, None, None, "identity",
                                                words.reshape(1, C, 1, 1))
    torch.testing.assert_close(loaded.flatten(), words, atol=0, rtol=0, equal_nan=True)


@needs_extension
def test_silu_tails_and_non_finite_values():
    # One channel per group and two pixels: n = +-1, so a = weight * (+-1) spans silu's range.
    big = torch.tensor([-100.0, -30.0, -5.0, -0.5, 0.5, 5.0, 30.0, 100.0])
    x = torch.tensor([[-1.0, 1.0]]).repeat(8, 1).reshape(1, 8, 1, 2)
    y = torch.ops.clockwork.group_norm_act(x, big, torch.zeros(8), 8, 0.0, None, None, "silu", None)
    a = big[:, None] * torch.tensor([-1.0, 1.0])
    torch.testing.assert_close(y.reshape(8, 2), F.silu(a.double()).float(), atol=1e-6, rtol=1e-6)
    x[0, 0, 0, 0] = float("nan")
    y = torch.ops.clockwork.group_norm_act(x, big, torch.zeros(8), 8, 0.0, None, None, "silu", None)
    assert y[0, 0].isnan().all() and y[0, 1:].isfinite().all()


@needs_extension
@pytest.mark.parametrize("change,message", [
    (dict(groups=7), "groups=7 must be positive and divide the channel count C=64"),
    (dict(groups=0), "groups=0"),
    (dict(x=torch.randn(2, 64, 25)), "x must be 4-D"),
    (dict(x=torch.randn(2, 64, 5, 5, dtype=torch.float64)), "x must be float32, float16 or bfloat16"),
    (dict(weight=torch.randn(32)), r"weight must be \[C\] = \[64\]"),
    (dict(bias=torch.randn(64, 1)), r"bias must be \[C\] = \[64\]"),
    (dict(scale=torch.randn(64)), r"scale must be \[B, C\] = \[2, 64\]"),
    (dict(shift=torch.randn(1, 64)), r"shift must be \[B, C\] = \[2, 64\]"),
    (dict(residual=torch.randn(2, 64, 5, 4)), "residual must have x's shape"),
    (dict(residual=torch.randn(2, 64, 5, 5, dtype=torch.float16)), "residual dtype Half must match x's dtype Float"),
    (dict(act="gelu"), "act must be 'identity' or 'silu', got 'gelu'"),
])
def test_input_checks_name_the_problem(change, message):
    args = dict(x=torch.randn(2, 64, 5, 5), weight=torch.randn(64), bias=torch.randn(64), groups=8, eps=1e-5,
                scale=None, shift=None, act="silu", residual=None)
    args.update(change)
    with pytest.raises((RuntimeError, ValueError), match=message):
        torch.ops.clockwork.group_norm_act(*args.values())


@needs_extension
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
def test_fake_and_meta_tensors_propagate_shape_dtype_and_layout(channels_last):
    inputs = make_inputs((2, 64, 5, 7), torch.float16, channels_last, True, True, True)
    real = op(inputs, 8, "silu")
    for to_abstract in (lambda t: t.to("meta"), FakeTensorMode().from_tensor):
        y = op({k: None if v is None else to_abstract(v) for k, v in inputs.items()}, 8, "silu")
        assert (y.shape, y.dtype, y.stride()) == (real.shape, real.dtype, real.stride())


@needs_extension
def test_torch_compile_traces_the_op_without_graph_breaks():
    inputs = make_inputs((2, 32, 5, 5), torch.float32, False, False, True, False)

    def block(x, weight, bias, shift):  # conv-free ResBlock fragment: GN -> +shift -> SiLU, then more ops
        return group_norm_act(x * 2, weight, bias, 8, shift=shift, act="silu") + x

    torch._dynamo.reset()
    compiled = torch.compile(block, fullgraph=True)
    args = [inputs[k] for k in ("x", "weight", "bias", "shift")]
    with torch.no_grad():
        torch.testing.assert_close(compiled(*args), block(*args), atol=1e-6, rtol=1e-6)


@needs_extension
def test_dispatch_cpu_inference_uses_the_extension():
    inputs = make_inputs((2, 64, 5, 5), torch.float32, True, True, True, True)
    args = [inputs[k] for k in ("x", "weight", "bias")]
    kw = dict(scale=inputs["scale"], shift=inputs["shift"], residual=inputs["residual"])
    assert torch.equal(group_norm_act(*args, 8, **kw), op(inputs, 8, "silu"))


def test_dispatch_disable_switch_forces_the_reference(monkeypatch):
    monkeypatch.setenv("CLOCKWORK_DISABLE_EXT", "1")
    inputs = make_inputs((2, 64, 5, 5), torch.float32, False, False, True, False)
    y = group_norm_act(inputs["x"], inputs["weight"], inputs["bias"], 8, shift=inputs["shift"])
    assert torch.equal(y, group_norm_act_reference(inputs["x"], inputs["weight"], inputs["bias"], 8,
                                                   shift=inputs["shift"]))


def test_dispatch_autograd_and_float64_take_the_reference():
    inputs = make_inputs((2, 64, 5, 5), torch.float32, False, False, True, False)
    weight = inputs["weight"].requires_grad_()
    y = group_norm_act(inputs["x"], weight, inputs["bias"], 8, shift=inputs["shift"])
    y.square().sum().backward()  # the fused kernels have no backward: training must still work
    assert weight.grad is not None and weight.grad.abs().sum() > 0
    x64 = inputs["x"].double()
    assert torch.equal(group_norm_act(x64, inputs["weight"], inputs["bias"], 8),
                       group_norm_act_reference(x64, inputs["weight"], inputs["bias"], 8))
