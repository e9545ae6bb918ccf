"""The comparison a user makes: this engine vs what they would otherwise run, on the demo
pipeline, same machine, one run.

    python benches/bench_e2e.py [--singles 100 --pairs 50 --steps 4 8 20 --guidance 3]
    python benches/bench_e2e.py --steps --sd15 [--sd15-steps 4]   # only the SD v1.5 harness

Per step count: stock diffusers StableDiffusionPipeline (the reference for PSNR/SSIM and
speed-up), DeepCache (PyPI package, on the same pipeline: --deepcache intervals, default 2 and
3, branch 0),
the engine with everything off, identity adaptor, the identity adaptor at cut 0 on each DeepCache
interval's clock (`cut0_deepcache_clock_i<N>`: DeepCache's images, tests/test_deepcache_parity.py,
so the two differ in speed only), clockwork with the fused ops off (eager
torch GroupNorm/SiLU), clockwork (fused ops + the graph sampler: on a CPU its "cpu" backend,
which runs the same per-step programs eagerly; CUDA graphs were never executed here),
clockwork + attention reuse (late: last quarter of the steps); at 8 steps also the
distilled students in clockwork_engine/demo/weights/students/ (each with its defaults:
clockwork where it ships an adaptor). The default adaptor was fitted at 8 steps: at other step
counts `clockwork` runs it off its operating point, and `clockwork_fitted_<n>` runs the one the
demo ships for n steps (clockwork_adaptors/), where it ships one. --clocks adds a variant per
clock schedule file of that step count (clockwork search-clock: `clock_<file name>`), its
adaptor the identity one or the one fitted for n steps; --variants keeps only the fixed
variants named (diffusers and DeepCache always run). Writes benches/results/e2e_<steps>.json and
a Pareto plot benches/results/pareto_<steps>.png (speed-up vs prompt alignment).

--sd15: the same variants that make sense without trained weights (stock diffusers, engine
full, clockwork with a 13.8M-parameter adaptor, untrained) on the SD v1.5 architecture at
512x512 with random weights: latency and UNet FLOPs only. Random weights make images noise,
so there is no quality to score; the cost of every layer is the real model's. Writes
benches/results/e2e_sd15.json.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import RESULTS, FusedOpsOff, machine, write  # noqa: E402


def pareto_plot(result: dict, path: str, steps: int):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, v in result["variants"].items():
        ax.scatter(v["latency_ratio"], 100 * v["single_colour_and_shape"], s=30)
        ax.annotate(name, (v["latency_ratio"], 100 * v["single_colour_and_shape"]), fontsize=7,
                    xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel(f"speed-up vs stock diffusers at {steps} steps (CPU, same run)")
    ax.set_ylabel("held-out single-shape prompts: colour+shape right (%)")
    ax.set_title(f"demo pipeline, {steps} steps")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def sd15_pipeline():
    """StableDiffusionPipeline with SD v1.5's UNet and VAE architectures, random weights, and a
    12-layer 768-d BERT (random) standing in for CLIP ViT-L/14's text tower (same width and
    depth; MiniLM's tokenizer, 77 tokens): no hub, so no real SD weights."""
    import torch
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import AutoTokenizer, BertConfig, BertModel

    from clockwork_engine.demo import models
    from clockwork_engine.tools.flops import SD15_TEXT_TOKENS, SD15_UNET

    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        sample_size=512)
    tokenizer = AutoTokenizer.from_pretrained(models.minilm_dir(), model_max_length=SD15_TEXT_TOKENS)
    text_encoder = BertModel(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=768, num_hidden_layers=12,
                                        num_attention_heads=12, intermediate_size=3072))
    return StableDiffusionPipeline(vae=vae.eval(), text_encoder=text_encoder.eval(), tokenizer=tokenizer,
                                   unet=UNet2DConditionModel(**SD15_UNET).eval(), scheduler=models.build_scheduler(),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def sd15(args):
    import tempfile

    from clockwork_engine import Engine, EngineConfig
    from clockwork_engine.clockwork import adaptors as A
    from clockwork_engine.clockwork.unet_split import UNetSplit
    from clockwork_engine.eval.baselines import DiffusersBaseline
    from clockwork_engine.eval.compare import latency
    from clockwork_engine.tools.flops import SD15_ADAPTOR_HIDDEN, SD15_TEXT_TOKENS, SD15_UNET, count_arch

    pipe = sd15_pipeline()
    n = args.sd15_steps
    with tempfile.TemporaryDirectory() as folder:  # an untrained adaptor of the paper's size
        split = UNetSplit(pipe.unet, 1)
        A.save(folder, A.Adaptor(A.AdaptorConfig.for_split(split, SD15_ADAPTOR_HIDDEN)), cut=1,
               base_fingerprint=A.model_fingerprint(pipe.unet), scheduler="DPMSolverMultistepScheduler", steps=n,
               clock={"every": 2, "adaptor_steps": None})
        base = Engine.from_pipeline(pipe, config=EngineConfig(mode="full"))
        clockwork = base.with_config(mode="clockwork", adaptor=folder)
        kw = dict(steps=n, guidance_scale=7.5, output="pt")
        timings = latency({"diffusers": (DiffusersBaseline(pipe), kw), "engine_full": (base, dict(mode="full", **kw)),
                           "clockwork": (clockwork, dict(mode="clockwork", **kw))}, args.sd15_repeats, warmup=0)
    flops = count_arch(SD15_UNET, SD15_TEXT_TOKENS, 768, SD15_ADAPTOR_HIDDEN, steps=n, clock_every=2)
    ref = timings["diffusers"]["median_s"]
    write("e2e_sd15.json", {
        "command": "python " + " ".join(sys.argv), "steps": n, "size": 512, "cfg_batch": 2,
        "what": "SD v1.5 UNet + VAE architectures, random weights (no quality: images are noise), "
                "text tower: random 12-layer 768-d BERT; clockwork adaptor untrained, 13.8M parameters",
        "schedule": clockwork.step_kinds(n, "clockwork"), "timings": timings,
        "speedup_vs_diffusers": {k: ref / v["median_s"] for k, v in timings.items()},
        "unet_tflops_per_image": {"full": flops["full"]["baseline_tflops_per_image"],
                                  "clockwork": flops["full"]["clockwork_tflops_per_image"],
                                  "convention": "full (attention-score matmuls included), CFG batch 2"},
        "machine": machine()})


def clock_variants(base, files: list[str], steps: int, learned: str) -> dict:
    """name -> (engine, generate kwargs): one clockwork variant per clock schedule file (from
    clockwork search-clock) made for `steps`: its adaptor steps, with the identity adaptor (at the
    file's cut) when it was searched with that one, the demo's adaptor fitted for `steps`
    (adaptor.for_steps) when with the model's, else the adaptor folder it names."""
    from clockwork_engine.clockwork import adaptors as adaptor_io
    from clockwork_engine.clockwork import clock_search

    variants = {}
    for path in files:
        schedule = clock_search.load(path)
        if schedule["steps"] != steps:
            continue
        name = "clock_" + os.path.splitext(os.path.basename(path))[0]
        config = clock_search.with_schedule(base.config, path)  # identity: its cut too
        if schedule.get("adaptor") == "model":
            config = config.with_(adaptor=adaptor_io.for_steps(learned, steps))
        elif schedule.get("adaptor") != "identity":  # an adaptor folder (relative to the repository root)
            config = config.with_(adaptor=schedule["adaptor"])
        engine = base.with_config(**{k: getattr(config, k) for k in ("mode", "adaptor", "adaptor_steps", "cut")})
        variants[name] = (engine, dict(steps=steps, mode="clockwork"))
    return variants


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--singles", type=int, default=100)
    ap.add_argument("--pairs", type=int, default=50)
    ap.add_argument("--steps", type=int, nargs="*", default=[4, 8, 20])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--guidance", type=float, default=None,
                    help="CFG scale of every variant (default: the demo's recommended one, its clockwork_engine.json)")
    ap.add_argument("--deepcache", type=int, nargs="*", default=[2, 3], help="DeepCache cache intervals")
    ap.add_argument("--clocks", nargs="*", default=[],
                    help="clock schedule files (clockwork search-clock): a clockwork variant each, at its step count")
    ap.add_argument("--variants", nargs="*", default=None,
                    help="only these of the fixed variants (diffusers always runs: the reference); default: all")
    ap.add_argument("--sd15", action="store_true", help="also the SD v1.5 random-weights harness")
    ap.add_argument("--sd15-steps", type=int, default=4)
    ap.add_argument("--sd15-repeats", type=int, default=2)
    args = ap.parse_args()
    for path in [p for p in args.clocks if not os.path.isfile(p)]:
        print(f"bench_e2e: no clock schedule {path}: its variant is left out", file=sys.stderr)
    args.clocks = [p for p in args.clocks if os.path.isfile(p)]
    if args.sd15:
        sd15(args)

    from clockwork_engine import Engine, EngineConfig
    from clockwork_engine.clockwork import adaptors as adaptor_io
    from clockwork_engine.clockwork import clock_search
    from clockwork_engine.demo.pipeline import DEMO_DIR
    from clockwork_engine.demo.pipeline import load as load_pipe
    from clockwork_engine.engine import ADAPTOR_FOLDER, student_presets
    from clockwork_engine.eval.baselines import DeepCacheBaseline, DiffusersBaseline
    from clockwork_engine.eval.compare import compare
    from clockwork_engine.reuse.search import late

    pipe = load_pipe()
    base = Engine.from_pipeline(pipe, config=EngineConfig(mode="full", attention_reuse=()))
    learned = os.path.join(DEMO_DIR, ADAPTOR_FOLDER)
    guidance = Engine.default_config("demo").guidance_scale if args.guidance is None else args.guidance
    for n in args.steps:
        kw = dict(steps=n, mode="clockwork")
        fitted = adaptor_io.for_steps(learned, n)  # the demo's adaptor fitted for n steps, where it ships one
        fixed = {
            **{f"deepcache_i{i}": (DeepCacheBaseline(pipe, i), dict(steps=n)) for i in args.deepcache},
            "engine_full": (base, dict(steps=n, mode="full")),
            "identity_adaptor": (base.with_config(mode="clockwork", adaptor="identity"), kw),
            # DeepCache's own clock at its cut (the identity adaptor at cut 0): its images, the engine's loop
            **{f"cut0_deepcache_clock_i{i}": (base.with_config(
                mode="clockwork", adaptor="identity", cut=0, adaptor_steps=tuple(clock_search.deepcache_clock(n, i))),
                kw) for i in args.deepcache},
            "clockwork_fused_ops_off": (FusedOpsOff(base.with_config(mode="clockwork", adaptor=learned)), kw),
            "clockwork": (base.with_config(mode="clockwork", adaptor=learned), kw),
            "clockwork+reuse": (base.with_config(mode="clockwork", adaptor=learned,
                                             attention_reuse=late(max(1, n // 4), n)), kw),
        }
        if fitted != learned:  # on the default clock 2
            fixed[f"clockwork_fitted_{n}"] = (base.with_config(mode="clockwork", adaptor=fitted), kw)
        if n == 8:
            for name in student_presets("demo"):
                student = Engine.from_pretrained("demo", preset=name)
                s_steps = student.config.steps
                fixed[f"student_{name}"] = (student, dict(steps=s_steps, mode=student.config.mode))
        if args.variants is not None:
            fixed = {k: v for k, v in fixed.items() if k in args.variants or k.startswith("deepcache_")}
        variants = {"diffusers": (DiffusersBaseline(pipe), dict(steps=n)), **fixed,
                    **clock_variants(base, args.clocks, n, learned)}
        result = compare(variants, args.singles, args.pairs, guidance=guidance, latency_repeats=args.repeats,
                         reference="diffusers")
        result["clocks"] = {f"clock_{os.path.splitext(os.path.basename(p))[0]}": clock_record(p)
                            for p in args.clocks if clock_record(p)["steps"] == n}
        env = "".join(f"{k}={os.environ[k]} " for k in ("OMP_NUM_THREADS",) if k in os.environ)
        write(f"e2e_{n}.json", {"command": env + "python " + " ".join(sys.argv), "steps": n, **result,
                                "machine": machine()})
        pareto_plot(result, os.path.join(RESULTS, f"pareto_{n}.png"), n)


def clock_record(path: str) -> dict:
    """What a results JSON keeps of a clock schedule file: its clock, adaptor and search cost."""
    from clockwork_engine.clockwork import clock_search

    d = clock_search.load(path)
    return {"file": os.path.relpath(path, os.path.dirname(RESULTS)), "steps": d["steps"],
            "adaptor_steps": d["adaptor_steps"], "budget": d.get("budget"), "adaptor": d.get("adaptor"),
            "cut": d.get("cut", 1),
            "adaptor_folder": d.get("adaptor_folder"), "search_seconds": d.get("search", {}).get("seconds"),
            "search_sampler_runs": d.get("search", {}).get("sampler_runs"),
            "calibration_captions": len(d.get("calibration", {}).get("captions", [])), "command": d.get("command")}


if __name__ == "__main__":
    main()
