"""SD3.5 medium latency on a 2-core x86 CPU: one full step against one identity-adaptor step,
and the engine end to end, full against clockwork.

    python benches/bench_sd3_latency.py                     # steps only
    python benches/bench_sd3_latency.py --e2e               # + the engine end to end

The SD3.5 medium transformer with random weights (clockwork_engine.tools.flops.SD35_MEDIUM, the
config `clockwork flops --arch sd3.5-medium` counts), fp32, 512x512 (64x64 latents: 1024
image tokens), CFG batch 2, 333 text tokens (77 CLIP + 256 T5), split at cut 1 (the first and
last joint block always run). Timed in one run, interleaved, medians:
  full_step              the transformer through the split (what clockwork.full runs)
  identity_adaptor_step  H_in + H_out: the embeddings, the first and last joint block, the
                         output layers, over the previous step's middle residual
--e2e: the engine end to end (Engine.from_pipeline on a StableDiffusion3Pipeline of the random
transformer, CLIP-L and CLIP-G of their published sizes, no T5: its 256 tokens are zeros, as
diffusers makes them without text_encoder_3; the SD3 VAE is not run: output="latent"), flow-
match Euler (shift 3), guidance 5, full against clockwork with the identity adaptor at clock 2:
each engine is warmed up by a request cancelled after its first step, then timed interleaved.
Random weights make the timings honest and the images meaningless. Writes
benches/results/latency_sd35_medium.json (--out).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_sdxl_latency import CLIP_BIGG, CLIP_L, tokenizer  # noqa: E402
from common import interleaved, machine, time_engines, write  # noqa: E402

from clockwork_engine.eval.compare import paired_speedup  # noqa: E402
from clockwork_engine.tools.flops import SD3_TEXT_TOKENS, SD35_MEDIUM, count_transformer  # noqa: E402

LATENT = 64  # 512x512 through the 8x VAE
# stabilityai/stable-diffusion-3.5-medium vae/config.json (what the pipeline reads: the factor, shift, scale)
SD3_VAE = dict(in_channels=3, out_channels=3, latent_channels=16, layers_per_block=2, sample_size=1024,
               block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
               up_block_types=("UpDecoderBlock2D",) * 4, scaling_factor=1.5305, shift_factor=0.0609,
               use_quant_conv=False, use_post_quant_conv=False)


def transformer():
    from diffusers import SD3Transformer2DModel

    torch.manual_seed(0)
    return SD3Transformer2DModel(**SD35_MEDIUM).eval()


def steps(model, repeats: int) -> dict:
    from clockwork_engine.clockwork.transformer_split import TransformerSplit

    split = TransformerSplit(model, 1)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16, LATENT, LATENT, generator=g)
    text = torch.randn(2, SD3_TEXT_TOKENS, SD35_MEDIUM["joint_attention_dim"], generator=g)
    added = {"pooled_projections": torch.randn(2, SD35_MEDIUM["pooled_projection_dim"], generator=g)}
    t = torch.full((2,), 500.0)
    with torch.inference_mode():
        first = split.h_in(x, t, text, None, added)
        r_prev = split.low(first.r_in, first.emb, text, first.skips)  # a middle residual, as the last full step left it

        def identity_step():
            h = split.h_in(x, t, text, None, added)
            split.h_out(r_prev, h.skips, h.emb, text)

        timings = interleaved({"full_step": lambda: split(x, t, text, None, added),
                               "identity_adaptor_step": identity_step}, repeats)
    med = {k: v["median_s"] for k, v in timings.items()}
    return {"timings": timings, "transformer_parameters": sum(p.numel() for p in model.parameters()),
            "identity_step_over_full_step": med["identity_adaptor_step"] / med["full_step"],
            "paired_identity_step_speedup": paired_speedup(timings, "full_step", "identity_adaptor_step")}


def end_to_end(model, repeats: int, steps_: int, folder: str) -> dict:
    import diffusers
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    from clockwork_engine import Engine, EngineConfig

    tok = tokenizer(folder)
    pipe = diffusers.StableDiffusion3Pipeline(
        transformer=model, vae=diffusers.AutoencoderKL(**SD3_VAE).eval(),
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0),
        text_encoder=CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_L)).eval(), tokenizer=tok,
        text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_BIGG)).eval(), tokenizer_2=tok,
        text_encoder_3=None, tokenizer_3=None)
    kw = dict(steps=steps_, guidance_scale=5.0, height=512, width=512, seed=0, output="latent")
    full = Engine.from_pipeline(pipe, config=EngineConfig(mode="full", steps=steps_))
    clock = Engine.from_pipeline(pipe, config=EngineConfig(mode="clockwork", adaptor="identity", steps=steps_,
                                                           clock_every=2))

    timings = time_engines({"full": (full, "full"), "clockwork": (clock, "clockwork")}, kw, repeats)
    return {"timings": timings, "schedule": clock.step_kinds(steps_, "clockwork"), "steps": steps_, "guidance": 5.0,
            "scheduler": "FlowMatchEulerDiscreteScheduler(shift=3.0)", "size": 512, "t5": "absent (zeros)",
            "output": "latent", "speedup": timings["full"]["median_s"] / timings["clockwork"]["median_s"],
            "paired_speedup": paired_speedup(timings, "full", "clockwork")}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3, help="interleaved repeats of the steps (after one warm-up)")
    ap.add_argument("--e2e", action="store_true", help="also the engine end to end at clock 2")
    ap.add_argument("--e2e-steps", type=int, default=8)
    ap.add_argument("--e2e-repeats", type=int, default=1)
    ap.add_argument("--out", default="latency_sd35_medium.json")
    args = ap.parse_args()
    command = "python " + " ".join(["benches/bench_sd3_latency.py", *sys.argv[1:]])
    counted = count_transformer(SD35_MEDIUM, args.e2e_steps, 2, latent=LATENT)
    result = {"what": "SD3.5 medium transformer architecture (random weights), 512x512, fp32, CFG batch 2, cut 1",
              "machine": machine(), "command": command, "repeats": args.repeats,
              # the same comparison in FLOPs at this size (meta tensors, untimed)
              "flops_512": {c: counted[c]["adaptor_step_fraction"] for c in ("paper", "full")}}
    model = transformer()
    result.update(steps(model, args.repeats))
    if args.e2e:
        with tempfile.TemporaryDirectory() as folder:
            result["end_to_end"] = {"command": command, "repeats": args.e2e_repeats,
                                    **end_to_end(model, args.e2e_repeats, args.e2e_steps, folder)}
    write(args.out, result)


if __name__ == "__main__":
    main()
