"""End-to-end latency, full vs clockwork, in one run (interleaved repeats).

    python benches/bench_clockwork_latency.py            # demo pipeline, 8 DPM++ steps, its CFG (3)
    python benches/bench_clockwork_latency.py --sd15     # + SD v1.5 architecture, random weights:
                                                         #   one full step vs one adaptor step
Writes benches/results/latency_demo.json (and latency_sd15_step.json).
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
    from clockwork_engine.eval.compare import fresh_prompt_calls

    engine = Engine.from_pretrained("demo")  # clockwork config with the committed adaptor
    kw = dict(steps=args.steps)  # the model directory's recommended guidance (engine.config)
    # End to end: every call a new prompt, so text encoding is timed (only "" stays cached).
    fns = fresh_prompt_calls({
        "full": (engine, dict(mode="full", **kw)),
        "clockwork": (engine, dict(mode="clockwork", **kw)),
        "clockwork_fused_ops_off": (FusedOpsOff(engine), dict(mode="clockwork", **kw)),
    }, args.repeats + 1)
    # Sampling only: one cached prompt (no text encoding), latents out (no VAE decode).
    prompt, sample_kw = "a small red circle in the top left", dict(output="latent", seed=0, **kw)
    fns["full_sampling_only"] = lambda: engine.generate(prompt, mode="full", **sample_kw)
    fns["clockwork_sampling_only"] = lambda: engine.generate(prompt, mode="clockwork", **sample_kw)
    t = interleaved(fns, args.repeats)
    write("latency_demo.json", {
        "command": "python " + " ".join(sys.argv), "steps": args.steps, "batch": 1, "cfg": True,
        "guidance": engine.config.guidance_scale,
        "schedule": engine.schedule(args.steps, "clockwork"), "timings": t, "prompts": "fresh",
        "speedup_end_to_end": t["full"]["median_s"] / t["clockwork"]["median_s"],
        "speedup_sampling_only": t["full_sampling_only"]["median_s"] / t["clockwork_sampling_only"]["median_s"],
        "fused_ops_speedup": t["clockwork_fused_ops_off"]["median_s"] / t["clockwork"]["median_s"],
        "fused_ops_built": __import__("clockwork_engine.ops", fromlist=["x"]).extension_available(),
        "machine": machine()})


def sd15(args):
    from diffusers import UNet2DConditionModel

    from clockwork_engine.adaptor import Adaptor, AdaptorConfig
    from clockwork_engine.flops import SD15_ADAPTOR_HIDDEN, SD15_UNET
    from clockwork_engine.unet_split import UNetSplit

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
    ap.add_argument("--sd15", action="store_true")
    ap.add_argument("--sd15-only", action="store_true", help="skip the demo timings")
    ap.add_argument("--sd15-repeats", type=int, default=3)
    args = ap.parse_args()
    if not args.sd15_only:
        demo(args)
    if args.sd15 or args.sd15_only:
        sd15(args)
