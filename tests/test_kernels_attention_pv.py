"""The Triton P.V kernel (kernels/attention_pv.py) against the torch reference, on CPU
under the Triton interpreter, plus the reference's shape checks and the CPU dispatch."""

import os

# Before anything imports triton: @triton.jit picks interpreter mode when it decorates.
os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

from clockwork_engine.kernels.attention_pv import attention_pv_triton  # noqa: E402
from clockwork_engine.ops.attention_pv import attention_pv, attention_pv_reference  # noqa: E402

pytestmark = pytest.mark.triton_interpreter

# (G, Nq, Nk, d): tiny; Nk = 16 text tokens; odd sizes everywhere (Nk = 77, d = 40); square self-attention.
SHAPES = [(2, 64, 16, 8), (3, 50, 77, 40), (4, 256, 256, 16)]
# |out - ref| <= atol + rtol * |ref|, ref the fp32 reference. atol: fp32 accumulation order.
# rtol: the output rounding. fp16 rounds to nearest (half an ulp, 2**-11 relative); bf16 gets
# a whole ulp (2**-7) because the interpreter's fp32 -> bf16 cast truncates (a GPU rounds to nearest).
TOL = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.float16: dict(atol=1e-5, rtol=2**-11),
       torch.bfloat16: dict(atol=1e-5, rtol=2**-7)}


def make_inputs(G, Nq, Nk, d, probs_dtype=torch.float32, value_dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    probs = torch.softmax(torch.randn(G, Nq, Nk, generator=gen) * 2, dim=-1).to(probs_dtype)  # real softmax rows
    value = torch.randn(G, Nk, d, generator=gen).to(value_dtype)
    return probs, value


def fp32_reference(probs, value):
    """The reference on upcast inputs: what a 16-bit output should round from."""
    return attention_pv_reference(probs.float(), value.float())


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_matches_reference(shape, dtype):
    probs, value = make_inputs(*shape, dtype, dtype)
    out = attention_pv_triton(probs, value)
    assert out.shape == (shape[0], shape[1], shape[3]) and out.dtype == dtype
    torch.testing.assert_close(out.float(), fp32_reference(probs, value), **TOL[dtype])


@pytest.mark.parametrize("probs_dtype,value_dtype", [(torch.float32, torch.float16), (torch.float16, torch.float32),
                                                     (torch.bfloat16, torch.float16)], ids=str)
def test_mixed_dtypes(probs_dtype, value_dtype):
    probs, value = make_inputs(3, 50, 77, 40, probs_dtype, value_dtype)
    out = attention_pv_triton(probs, value)
    assert out.dtype == value_dtype  # the output follows value
    torch.testing.assert_close(out.float(), fp32_reference(probs, value), **TOL[value_dtype])


def test_non_contiguous_views():
    # value as a transposed view of [G, d, Nk] (the layout head_to_batch_dim can leave), probs as a
    # column slice of a wider map: both read through strides, no copy.
    G, Nq, Nk, d = 3, 50, 77, 40
    probs, value = make_inputs(G, Nq, Nk, d)
    value_t = value.transpose(1, 2).contiguous().transpose(1, 2)  # [G, Nk, d], strides (d*Nk, 1, Nk)
    wide = torch.zeros(G, Nq, Nk + 5)
    wide[:, :, 2:Nk + 2] = probs
    probs_view = wide[:, :, 2:Nk + 2]
    assert not value_t.is_contiguous() and not probs_view.is_contiguous()
    out = attention_pv_triton(probs_view, value_t)
    torch.testing.assert_close(out, attention_pv_reference(probs, value), **TOL[torch.float32])


def test_d_wider_than_one_tile():
    # d = 160 (SD1.5's deepest heads) needs two d tiles of 128.
    probs, value = make_inputs(1, 20, 16, 160)
    torch.testing.assert_close(attention_pv_triton(probs, value), attention_pv_reference(probs, value),
                               **TOL[torch.float32])


@pytest.mark.parametrize("bad", [((2, 8, 16), (2, 15, 8)), ((2, 8, 16), (3, 16, 8)), ((8, 16), (16, 8)),
                                 ((2, 8, 16), (2, 16, 8, 1))], ids=["Nk", "G", "2d", "4d"])
@pytest.mark.parametrize("fn", [attention_pv_reference, attention_pv_triton], ids=lambda f: f.__name__)
def test_rejects_bad_shapes(fn, bad):
    probs, value = torch.rand(bad[0]), torch.rand(bad[1])
    with pytest.raises(ValueError) as err:
        fn(probs, value)
    assert str(tuple(probs.shape)) in str(err.value) and str(tuple(value.shape)) in str(err.value)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_cpu_dispatch_is_the_reference(dtype):
    probs, value = make_inputs(2, 64, 16, 8, dtype, dtype)
    assert torch.equal(attention_pv(probs, value), attention_pv_reference(probs, value))
