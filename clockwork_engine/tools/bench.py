"""clockwork bench: the engine against stock diffusers on your own model, in one run.

    clockwork bench --model DIR|demo [--steps 8 --scheduler NAME --size 512 --json out.json --plot out.png]

Variants: stock diffusers (StableDiffusionPipeline on the same components and scheduler: the
reference), the engine in full mode, clockwork (the model's adaptor, or the identity adaptor
when it has none: what clockwork costs before an adaptor is fitted), the inductor backend
(full mode, compiled; --no-inductor skips it: compiling takes tens of seconds to minutes) and
every distilled student the model directory ships (at its own settings). Latency: one image
per call with a prompt no call has used before (text encoding included), medians of
interleaved repeats after a warm-up; FLOPs per image by torch.utils.flop_counter (text
encoder, every model evaluation and the decoder); with a trained adaptor also the PSNR of
clockwork's images to full mode's (same prompts and seeds).
"""

from __future__ import annotations

import argparse
import copy
import json

import torch
from tqdm import tqdm

PROMPTS = ("a red circle", "a cat on a sofa", "a blue square", "a lighthouse")  # short: fit any text encoder


def build_parser(ap=None):
    ap = ap or argparse.ArgumentParser(prog="clockwork bench", description=__doc__,
                                       formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="demo",
                    help="'demo', 'demo-sd3', 'demo-flux' or a local diffusers model directory")
    ap.add_argument("--steps", type=int, default=None, help="sampler steps (default: the model's)")
    ap.add_argument("--scheduler", default=None, help="a scheduler name (default: the model's own)")
    ap.add_argument("--size", type=int, default=None, help="image side in pixels (default: the model's)")
    ap.add_argument("--guidance", type=float, default=None, help="CFG scale (default: the model's)")
    ap.add_argument("--repeats", type=int, default=5, help="timed calls per variant")
    ap.add_argument("--no-inductor", action="store_true", help="skip the compiled (inductor) variant")
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--plot", default=None, help="write a latency bar chart (PNG) here")
    return ap


def _variants(args):
    from diffusers import StableDiffusionPipeline

    from clockwork_engine import Engine
    from clockwork_engine.engine import student_presets

    config = Engine.default_config(args.model).with_(mode="full")
    if args.scheduler:
        config = config.with_(scheduler=args.scheduler)
    base = Engine.from_pretrained(args.model, config=config)
    pipe = StableDiffusionPipeline(vae=base.vae, text_encoder=base.text_encoder, tokenizer=base.prompts.tokenizer,
                                   unet=base.unet, scheduler=copy.deepcopy(base.scheduler), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    steps = args.steps or config.steps
    size = args.size or base.default_size
    common = dict(steps=steps, height=size, width=size, guidance_scale=args.guidance or config.guidance_scale)
    variants = {"diffusers": (None, common), "full": (base, common)}
    trained = base.adaptor_dir is not None
    variants["clockwork" if trained else "clockwork_identity"] = (
        base.with_config(mode="clockwork", adaptor=base.adaptor_dir or "identity"), common)
    if not args.no_inductor:
        variants["full_inductor"] = (base.with_config(backend="inductor"), common)
    for preset in student_presets(args.model):
        student = Engine.from_pretrained(args.model, preset=preset, config="full")
        variants[preset] = (student, {**common, "steps": student.config.steps,
                                      "guidance_scale": student.config.guidance_scale})
    return base, pipe, variants, trained


def _call(pipe, engine, kw, prompt, seed=0, output="pt"):
    if engine is None:
        return pipe(prompt, num_inference_steps=kw["steps"], guidance_scale=kw["guidance_scale"], height=kw["height"],
                    width=kw["width"], generator=torch.Generator().manual_seed(seed), output_type=output).images[0]
    return engine.generate(prompt, seed=seed, output=output, **kw)


def run(args) -> dict:
    from clockwork_engine.eval.compare import gflops_of, interleaved
    from clockwork_engine.eval.metrics import psnr

    base, pipe, variants, trained = _variants(args)
    fns, counter = {}, iter(range(10**9))
    for name, (engine, kw) in variants.items():
        fns[name] = (lambda e=engine, k=kw: _call(pipe, e, k, f"{PROMPTS[0]} {next(counter)}"))
    bar = tqdm(total=len(fns) * (args.repeats + 2), desc="bench", unit="call")

    def ticking(fn):
        def call():
            fn()
            bar.update(1)
        return call

    with torch.no_grad():
        # two warm-up calls: the second is the first with the empty prompt cached (the inductor
        # backend compiles the text encoder again for that batch)
        timings = interleaved({k: ticking(f) for k, f in fns.items()}, args.repeats, warmup=2)
    bar.close()
    ref = timings["diffusers"]["median_s"]
    results = {}
    for name, (engine, kw) in variants.items():
        t = timings[name]
        results[name] = {"steps": kw["steps"], "guidance_scale": kw["guidance_scale"],
                         **{k: t[k] for k in ("median_s", "p25_s", "p75_s", "times_s")}, "speedup": ref / t["median_s"]}
        if name != "full_inductor":  # counting under the flop counter would retrace the compiled programs
            prompt = f"{PROMPTS[1]} {next(counter)}"
            results[name]["gflops_per_image"] = gflops_of(lambda p, e=engine, k=kw: _call(pipe, e, k, p),
                                                          prompt, prompt + " 0")
    if trained:
        full, clock = variants["full"], variants["clockwork"]
        a = torch.stack([_call(pipe, full[0], full[1], p, seed=k) for k, p in enumerate(PROMPTS)])
        b = torch.stack([_call(pipe, clock[0], clock[1], p, seed=k) for k, p in enumerate(PROMPTS)])
        results["clockwork"]["psnr_to_full"] = float(psnr(b, a).mean())
    out = {"model": args.model, "scheduler": type(base.scheduler).__name__, "size": variants["full"][1]["height"],
           "repeats": args.repeats, "variants": results}
    _print(out)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    if args.plot:
        _plot(out, args.plot)
    return out


def _print(out):
    print(f"\n{out['model']}: {out['scheduler']}, {out['size']}x{out['size']}, medians of {out['repeats']} calls")
    print(f"{'variant':28s} {'steps':>5s} {'ms':>9s} {'p25-p75 ms':>15s} {'speed-up':>9s} {'GFLOPs':>9s} {'PSNR':>6s}")
    for name, r in out["variants"].items():
        gf = f"{r['gflops_per_image']:.2f}" if "gflops_per_image" in r else "-"
        ps = f"{r['psnr_to_full']:.1f}" if "psnr_to_full" in r else "-"
        print(f"{name:28s} {r['steps']:5d} {1e3 * r['median_s']:9.1f} "
              f"{1e3 * r['p25_s']:7.1f}-{1e3 * r['p75_s']:<7.1f} {r['speedup']:8.2f}x {gf:>9s} {ps:>6s}")


def _plot(out, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(out["variants"])
    ms = [1e3 * out["variants"][n]["median_s"] for n in names]
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(names) + 1.2))
    ax.barh(names, ms, color=["#888888"] + ["#3366aa"] * (len(names) - 1))
    for y, (n, v) in enumerate(zip(names, ms, strict=True)):
        ax.text(v, y, f" {v:.0f} ms, {out['variants'][n]['speedup']:.2f}x", va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("latency per image (ms, median)")
    ax.set_title(f"{out['model']}: {out['scheduler']}, {out['size']}px")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    return run(build_parser().parse_args(argv))
