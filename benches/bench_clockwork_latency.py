"""End-to-end latency, full vs clockwork, in one run (interleaved repeats).

    python benches/bench_clockwork_latency.py            # demo pipeline, 8 DPM++ steps, its CFG (3)
    python benches/bench_clockwork_latency.py --inductor # + both modes on the inductor backend
    python benches/bench_clockwork_latency.py --sd15     # + SD v1.5 architecture, random weights:
                                                         #   one full step vs one adaptor step
Writes benches/results/latency_demo.json (--out; and latency_sd15_step.json).
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import FusedOpsOff, interleaved, machine, write  # noqa: E402


def demo(args):
    from clockwork_engine import Engine
    from clockwork_engine.eval.compare import fresh_prompt_calls, paired_speedup

    engine = Engine.from_pretrained(args.model)  # clockwork config with the directory's adaptor
    kw = dict(steps=args.steps)  # the model directory's recommended guidance (engine.config)
    variants = {
        "full": (engine, dict(mode="full", **kw)),
        "clockwork": (engine, dict(mode="clockwork", **kw)),
        "clockwork_fused_ops_off": (FusedOpsOff(engine), dict(mode="clockwork", **kw)),
    }
    if args.inductor:  # the same weights; steps, text encoder and VAE compiled (by the untimed first call)
        compiled = engine.with_config(backend="inductor")
        variants.update({"full_inductor": (compiled, dict(mode="full", **kw)),
                         "clockwork_inductor": (compiled, dict(mode="clockwork", **kw))})
    # End to end: every call a new prompt, so text encoding is timed (only "" stays cached).
    fns = fresh_prompt_calls(variants, args.repeats + 1)
    # Sampling only: one cached prompt (no text encoding), latents out (no VAE decode).
    prompt, sample_kw = "a small red circle in the top left", dict(output="latent", seed=0, **kw)
    fns["full_sampling_only"] = lambda: engine.generate(prompt, mode="full", **sample_kw)
    fns["clockwork_sampling_only"] = lambda: engine.generate(prompt, mode="clockwork", **sample_kw)
    if args.inductor:
        fns["full_inductor_sampling_only"] = lambda: compiled.generate(prompt, mode="full", **sample_kw)
        fns["clockwork_inductor_sampling_only"] = lambda: compiled.generate(prompt, mode="clockwork", **sample_kw)
    t = interleaved(fns, args.repeats)
    parts = step_parts(engine, args.steps, args.repeats, skip_prompts=len(fns) * (args.repeats + 1))
    ratio = lambda a, b: t[a]["median_s"] / t[b]["median_s"]  # noqa: E731  (ratio of medians)
    paired = {"end_to_end": paired_speedup(t, "full", "clockwork"),
              "sampling_only": paired_speedup(t, "full_sampling_only", "clockwork_sampling_only")}
    inductor = {}
    if args.inductor:
        inductor = {"speedup_end_to_end_inductor": ratio("full_inductor", "clockwork_inductor"),
                    "speedup_sampling_only_inductor": ratio("full_inductor_sampling_only",
                                                            "clockwork_inductor_sampling_only"),
                    "inductor_over_eager_full": ratio("full", "full_inductor"),
                    "inductor_over_eager_clockwork": ratio("clockwork", "clockwork_inductor")}
        paired |= {"end_to_end_inductor": paired_speedup(t, "full_inductor", "clockwork_inductor"),
                   "sampling_only_inductor": paired_speedup(t, "full_inductor_sampling_only",
                                                            "clockwork_inductor_sampling_only")}
    write(args.out, {
        "command": "python " + " ".join(sys.argv), "model": args.model, "steps": args.steps, "batch": 1, "cfg": True,
        "guidance": engine.config.guidance_scale,
        "schedule": engine.step_kinds(args.steps, "clockwork"), "timings": t, "prompts": "fresh",
        "speedup_end_to_end": ratio("full", "clockwork"),
        "speedup_sampling_only": ratio("full_sampling_only", "clockwork_sampling_only"),
        "paired_speedup": paired,  # median of per-round ratios (calls timed back to back)
        "fused_ops_speedup": ratio("clockwork_fused_ops_off", "clockwork"),
        "fused_ops_built": __import__("clockwork_engine.ops", fromlist=["x"]).extension_available(),
        **inductor, "parts_ms": parts, "machine": machine()})


def step_parts(engine, steps: int, repeats: int, skip_prompts: int) -> dict:
    """Median ms of the pieces of a request (CFG batch 2, interleaved): a full step, an adaptor
    step and their parts, text encoding of a new prompt (+ the cached ""), the VAE decode; and the
    speed-up those step costs allow with no fixed cost at all: 2 / (1 + adaptor step / full step)."""
    from clockwork_engine.eval.compare import fresh_prompts

    point = engine.operating_point(steps)  # the adaptor a `steps`-step request runs, and its split
    split, adaptor = point.split, point.adaptor
    prompts = iter(fresh_prompts(repeats + 2, skip=skip_prompts))  # captions the requests above did not use
    text = engine.prompts.encode(["", next(prompts)])  # [2, L, D]
    size = engine.default_size // engine.vae_factor  # latent side
    x, t = torch.randn(2, engine.unet.config.in_channels, size, size), torch.tensor(500)
    with torch.inference_mode():
        hin = split.h_in(x, t, text)
        r_out = split.low(hin.r_in, hin.emb, text)

        def adaptor_step():
            h = split.h_in(x, t, text)
            split.h_out(adaptor(h.r_in, r_out, h.emb, text), h.skips, h.emb, text)

        t_parts = interleaved({
            "full_step": lambda: split(x, t, text), "adaptor_step": adaptor_step,
            "h_in": lambda: split.h_in(x, t, text), "low": lambda: split.low(hin.r_in, hin.emb, text),
            "h_out": lambda: split.h_out(r_out, hin.skips, hin.emb, text),
            "adaptor_phi": lambda: adaptor(hin.r_in, r_out, hin.emb, text),
            "text_encode_new_prompt": lambda: engine.prompts.encode(["", next(prompts)]),
            "vae_decode": lambda: engine.vae.decode(x[:1] / engine.vae.config.scaling_factor).sample,
        }, repeats)
    ms = {k: v["median_s"] * 1e3 for k, v in t_parts.items()}
    return {**ms, "adaptor_over_full_step": ms["adaptor_step"] / ms["full_step"],
            "ceiling_without_fixed_costs": 2 / (1 + ms["adaptor_step"] / ms["full_step"])}


def sd15(args):
    from diffusers import UNet2DConditionModel

    from clockwork_engine.clockwork.adaptors import Adaptor, AdaptorConfig
    from clockwork_engine.clockwork.unet_split import UNetSplit
    from clockwork_engine.tools.flops import SD15_ADAPTOR_HIDDEN, SD15_UNET

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**SD15_UNET).eval()
    split = UNetSplit(unet, 1)
    adaptor = Adaptor(AdaptorConfig.for_split(split, SD15_ADAPTOR_HIDDEN)).eval()
    x, text, t = torch.randn(2, 4, 64, 64), torch.randn(2, 77, 768), torch.tensor(500)
    r_prev = torch.randn(2, split.r_out_channels, 32, 32)

    def adaptor_step():
        hin = split.h_in(x, t, text)
        split.h_out(adaptor(hin.r_in, r_prev, hin.emb, text), hin.skips, hin.emb, text)

    with torch.no_grad():
        timings = interleaved({"full_step": lambda: split(x, t, text), "adaptor_step": adaptor_step},
                              args.sd15_repeats)
    write("latency_sd15_step.json", {
        "command": "python benches/bench_clockwork_latency.py --sd15",
        "what": "SD v1.5 UNet architecture (random weights), 512x512, CFG batch 2, one step each",
        "timings": timings, "adaptor_step_over_full_step": timings["adaptor_step"]["median_s"] / timings[
            "full_step"]["median_s"], "machine": machine()})


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--inductor", action="store_true", help="also time both modes on the inductor backend")
    ap.add_argument("--model", default="demo", help="a model directory with a clockwork_adaptor/ (default: demo)")
    ap.add_argument("--out", default="latency_demo.json")
    ap.add_argument("--sd15", action="store_true")
    ap.add_argument("--sd15-only", action="store_true", help="skip the demo timings")
    ap.add_argument("--sd15-repeats", type=int, default=3)
    args = ap.parse_args()
    if not args.sd15_only:
        demo(args)
    if args.sd15 or args.sd15_only:
        sd15(args)
