"""SDXL latency on this CPU: one full step against one adaptor step, and end to end.

    python benches/bench_sdxl_latency.py                    # steps only (about 5 min on 2 cores)
    python benches/bench_sdxl_latency.py --e2e              # + 8 steps, clock 2, end to end

The SDXL base architecture with random weights (clockwork_engine.tools.flops.SDXL_UNET, the config
`clockwork flops --arch sdxl` counts, built by flops.build), fp32, 512x512 (64x64 latents),
CFG batch 2, split at 32x32 (cut 1), diffusers' default attention processor. Timed in one run,
interleaved, medians:
  full_step              the UNet (through the split: what the engine's clockwork.full step runs)
  adaptor_step           h_in + the untrained ResNet adaptor (as wide as r_out) + h_out
  identity_adaptor_step  h_in + h_out (the identity adaptor: r_out of the previous step as it is)
  adaptor_phi            the adaptor alone (its cost: untrained weights cost what trained ones do)
--e2e: the engine end to end (Engine.from_pipeline on a StableDiffusionXLPipeline of random
SDXL-sized components: both text encoders, the SDXL VAE; a new prompt each call, text encoding
and VAE decode included), 8 Euler steps, guidance 5, full against clockwork (clock 2, the
untrained adaptor): each engine is first warmed up by a request cancelled after its first step
(the step programs' build), then timed interleaved. Random weights make the timings honest and
the images meaningless. Writes benches/results/latency_sdxl.json (--out).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import RESULTS, interleaved, machine, time_engines, write  # noqa: E402

from clockwork_engine.eval.compare import paired_speedup  # noqa: E402
from clockwork_engine.tools.flops import SD15_TEXT_TOKENS, SDXL_UNET, build, count_arch, example_inputs  # noqa: E402

TEXT_DIM = 2048  # 768 (CLIP ViT-L) + 1280 (OpenCLIP bigG) concatenated
# stabilityai/stable-diffusion-xl-base-1.0: text_encoder/, text_encoder_2/, vae/ config.json
# (the fields that shape compute) and its scheduler
CLIP_L = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
              max_position_embeddings=77, projection_dim=768, hidden_act="quick_gelu", vocab_size=49408)
CLIP_BIGG = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
                 max_position_embeddings=77, projection_dim=1280, hidden_act="gelu", vocab_size=49408)
SDXL_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=1024,
                block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4, scaling_factor=0.13025, force_upcast=True)
SDXL_SCHEDULER = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, timestep_spacing="leading",
                      steps_offset=1)


def steps(repeats: int) -> dict:
    torch.manual_seed(0)
    unet, split, adaptor = build(SDXL_UNET)
    x, t, text, added = example_inputs(SDXL_UNET, 2, SD15_TEXT_TOKENS, TEXT_DIM, latent=64)
    with torch.inference_mode():
        hin = split.h_in(x, t, text, None, added)
        r_prev = torch.randn(2, split.r_out_channels, *hin.r_in.shape[-2:])

        def adaptor_step():
            h = split.h_in(x, t, text, None, added)
            split.h_out(adaptor(h.r_in, r_prev, h.emb, text), h.skips, h.emb, text)

        def identity_step():
            h = split.h_in(x, t, text, None, added)
            split.h_out(r_prev, h.skips, h.emb, text)

        timings = interleaved({"full_step": lambda: split(x, t, text, None, added), "adaptor_step": adaptor_step,
                               "identity_adaptor_step": identity_step,
                               "adaptor_phi": lambda: adaptor(hin.r_in, r_prev, hin.emb, text)}, repeats)
    med = {k: v["median_s"] for k, v in timings.items()}
    return {"timings": timings, "unet_parameters": sum(p.numel() for p in unet.parameters()),
            "adaptor_parameters": sum(p.numel() for p in adaptor.parameters()),
            "adaptor_step_over_full_step": med["adaptor_step"] / med["full_step"],
            "identity_step_over_full_step": med["identity_adaptor_step"] / med["full_step"],
            "paired_adaptor_step_speedup": paired_speedup(timings, "full_step", "adaptor_step"),
            # what 8 steps at clock 2 (4 full, 4 adaptor) allow with no other cost
            "step_ceiling_8_steps_clock_2": 2 / (1 + med["adaptor_step"] / med["full_step"])}


def tokenizer(folder: str):
    """A CLIPTokenizer over a small byte-level vocabulary (no download): prompts are padded to
    SDXL's 77 tokens, which is all the text encoders' cost depends on."""
    import string

    from transformers import CLIPTokenizer

    chars = list(string.ascii_lowercase + string.digits + ",.!")
    tokens = ["<|startoftext|>", "<|endoftext|>"] + chars + [c + "</w>" for c in chars]
    with open(os.path.join(folder, "vocab.json"), "w") as f:
        json.dump({t: i for i, t in enumerate(tokens)}, f)
    with open(os.path.join(folder, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n")
    return CLIPTokenizer(os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt"), model_max_length=77)


def end_to_end(repeats: int, folder: str) -> dict:
    import diffusers
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from clockwork_engine import Engine, EngineConfig
    from clockwork_engine.clockwork import adaptors as adaptor_io
    from clockwork_engine.clockwork.clock import Clock
    from clockwork_engine.sampler import noise_schedulers

    torch.manual_seed(0)
    unet, split, adaptor = build(SDXL_UNET)
    tok = tokenizer(folder)
    pipe = diffusers.StableDiffusionXLPipeline(
        vae=diffusers.AutoencoderKL(**SDXL_VAE).eval(), text_encoder=CLIPTextModel(CLIPTextConfig(**CLIP_L)).eval(),
        text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_BIGG)).eval(), tokenizer=tok,
        tokenizer_2=tok, unet=unet, scheduler=diffusers.EulerDiscreteScheduler(**SDXL_SCHEDULER),
        force_zeros_for_empty_prompt=True)
    adaptor_dir = os.path.join(folder, "adaptor")
    adaptor_io.save(adaptor_dir, adaptor, cut=1, base_fingerprint=adaptor_io.model_fingerprint(unet),
                    scheduler=noise_schedulers.describe(pipe.scheduler), steps=8, clock=Clock(every=2).to_dict())
    kw = dict(steps=8, guidance_scale=5.0, height=512, width=512, seed=0)
    full = Engine.from_pipeline(pipe, config=EngineConfig(mode="full", steps=8))
    clock = Engine.from_pipeline(pipe, config=EngineConfig(mode="clockwork", adaptor=adaptor_dir, steps=8,
                                                           clock_every=2))

    timings = time_engines({"full": (full, "full"), "clockwork": (clock, "clockwork")}, kw, repeats)
    return {"timings": timings, "schedule": clock.step_kinds(8, "clockwork"), "steps": 8, "guidance": 5.0,
            "scheduler": "EulerDiscreteScheduler", "size": 512,
            "speedup": timings["full"]["median_s"] / timings["clockwork"]["median_s"],
            "paired_speedup": paired_speedup(timings, "full", "clockwork")}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3, help="interleaved repeats of the steps (after one warm-up)")
    ap.add_argument("--e2e", action="store_true", help="also the engine end to end, 8 steps at clock 2")
    ap.add_argument("--e2e-only", action="store_true", help="only the end-to-end part (keeps the file's steps)")
    ap.add_argument("--e2e-repeats", type=int, default=1)
    ap.add_argument("--out", default="latency_sdxl.json")
    args = ap.parse_args()
    path = os.path.join(RESULTS, args.out)
    result = {}
    if args.e2e_only and os.path.exists(path):
        with open(path) as f:
            result = json.load(f)
    result.update({"what": "SDXL base UNet architecture (random weights), 512x512, fp32, CFG batch 2, cut 1",
                   "machine": machine()})
    # the same comparison in FLOPs at this size (meta tensors, untimed)
    counted = count_arch(SDXL_UNET, SD15_TEXT_TOKENS, TEXT_DIM, None, 8, 2, latent=64)
    result["flops_512"] = {c: counted[c]["adaptor_step_tflops"] / counted[c]["full_step_tflops"]
                           for c in ("paper", "full")}
    if not args.e2e_only:
        result.update({"command": "python " + " ".join(["benches/bench_sdxl_latency.py", *sys.argv[1:]]),
                       "repeats": args.repeats, **steps(args.repeats)})
    if args.e2e or args.e2e_only:
        with tempfile.TemporaryDirectory() as folder:
            result["end_to_end"] = {"command": "python " + " ".join(["benches/bench_sdxl_latency.py", *sys.argv[1:]]),
                                    "repeats": args.e2e_repeats, **end_to_end(args.e2e_repeats, folder)}
    write(args.out, result)


if __name__ == "__main__":
    main()
