"""P.V for attention-map reuse: torch.bmm (the reference) vs the Triton kernel, pytest-benchmark.

    python -m pytest benches/bench_attention_pv.py [--benchmark-json out.json]

Shapes (G = batch*heads, Nq, Nk, d), self-attention at the top resolution with CFG:
  demo   2 x 2 heads, 16x16 latents, d = 16   -> (4, 256, 256, 16)
  sd15   2 x 8 heads, 64x64 latents, d = 40   -> (16, 4096, 4096, 40), CUDA only (the fp16 map is 512 MiB)
fp32 on CPU (the demo's dtype), fp16 on CUDA. The Triton kernel needs CUDA (skipped otherwise), so
on a CPU machine only torch.bmm at demo size runs. Lives outside tests/, so plain `pytest` skips it.
Each case checks the kernel against the reference before timing; rounds are few to keep runs short.
"""

from __future__ import annotations

import pytest
import torch

from clockwork_engine.ops.attention_pv import attention_pv_reference

CUDA = torch.cuda.is_available()
SHAPES = {"demo": (4, 256, 256, 16), "sd15": (16, 4096, 4096, 40)}


def triton_pv(probs, value):
    from clockwork_engine.kernels.attention_pv import attention_pv_triton  # imports triton

    return attention_pv_triton(probs, value)


IMPLS = {"bmm": attention_pv_reference, "triton": triton_pv}


@pytest.mark.parametrize("shape_name", SHAPES)
@pytest.mark.parametrize("impl", IMPLS)
def test_attention_pv(benchmark, impl, shape_name):
    if impl == "triton" and not CUDA:
        pytest.skip("the Triton kernel needs CUDA (tests/test_kernels_attention_pv.py runs it under the interpreter)")
    if shape_name == "sd15" and not CUDA:
        pytest.skip("SD-sized maps are too big for a CPU benchmark")
    G, Nq, Nk, d = SHAPES[shape_name]
    device, dtype = ("cuda", torch.float16) if CUDA else ("cpu", torch.float32)
    gen = torch.Generator(device=device).manual_seed(0)
    probs = torch.softmax(torch.randn(G, Nq, Nk, device=device, dtype=dtype, generator=gen), dim=-1)
    value = torch.randn(G, Nk, d, device=device, dtype=dtype, generator=gen)
    fn = IMPLS[impl]
    torch.testing.assert_close(fn(probs, value), attention_pv_reference(probs, value), atol=2e-3, rtol=2e-3)

    def run():
        fn(probs, value)
        if CUDA:
            torch.cuda.synchronize()  # time the kernel, not the launch

    benchmark.pedantic(run, rounds=20, iterations=1, warmup_rounds=2)
    # The op is bandwidth-bound on reading probs (d is small), so report the bytes it must move.
    moved = (probs.numel() + value.numel() + G * Nq * d) * probs.element_size()
    benchmark.extra_info.update(shape=[G, Nq, Nk, d], dtype=str(dtype), device=device,
                                gbytes_per_s=moved / benchmark.stats.stats.median / 1e9)
