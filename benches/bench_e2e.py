"""The comparison a user makes: this engine vs what they would otherwise run, on the demo
pipeline, same machine, one run.

    python benches/bench_e2e.py [--singles 100 --pairs 50 --steps 4 8 20 --guidance 3]
    python benches/bench_e2e.py --steps --sd15 [--sd15-steps 4]   # only the SD v1.5 harness

Per step count: stock diffusers StableDiffusionPipeline (the reference for PSNR/SSIM and
speed-up), DeepCache (PyPI package, on the same pipeline: interval 2 and 3, branch 0),
the engine with everything off, identity adaptor, clockwork with the fused ops off (eager
torch GroupNorm/SiLU), clockwork (fused ops + the graph sampler: on a CPU its "cpu" backend,
which runs the same per-step programs eagerly; CUDA graphs were never executed here),
clockwork + attention reuse (late: last quarter of the steps); at 8 steps also the
distilled students in clockwork_engine/demo/weights/students/ (each with its defaults:
clockwork where it ships an adaptor). The committed adaptor was fitted at 8 steps: at 4
and 20 steps it runs off its operating point. Writes benches/results/e2e_<steps>.json and
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
    from clockwork_engine.flops import SD15_TEXT_TOKENS, SD15_UNET

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
    from clockwork_engine import adaptor as A
    from clockwork_engine.eval.baselines import DiffusersBaseline
    from clockwork_engine.eval.compare import latency
    from clockwork_engine.flops import SD15_ADAPTOR_HIDDEN, SD15_TEXT_TOKENS, SD15_UNET, count_arch
    from clockwork_engine.unet_split import UNetSplit

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
        "schedule": clockwork.schedule(n, "clockwork"), "timings": timings,
        "speedup_vs_diffusers": {k: ref / v["median_s"] for k, v in timings.items()},
        "unet_tflops_per_image": {"full": flops["full"]["baseline_tflops_per_image"],
                                  "clockwork": flops["full"]["clockwork_tflops_per_image"],
                                  "convention": "full (attention-score matmuls included), CFG batch 2"},
        "machine": machine()})


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--singles", type=int, default=100)
    ap.add_argument("--pairs", type=int, default=50)
    ap.add_argument("--steps", type=int, nargs="*", default=[4, 8, 20])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--guidance", type=float, default=None,
                    help="CFG scale of every variant (default: the demo's recommended one, its clockwork_engine.json)")
    ap.add_argument("--sd15", action="store_true", help="also the SD v1.5 random-weights harness")
    ap.add_argument("--sd15-steps", type=int, default=4)
    ap.add_argument("--sd15-repeats", type=int, default=2)
    args = ap.parse_args()
    if args.sd15:
        sd15(args)

    from clockwork_engine import Engine, EngineConfig
    from clockwork_engine.demo.pipeline import DEMO_DIR
    from clockwork_engine.demo.pipeline import load as load_pipe
    from clockwork_engine.engine import ADAPTOR_FOLDER, student_presets
    from clockwork_engine.eval.baselines import DeepCacheBaseline, DiffusersBaseline
    from clockwork_engine.eval.compare import compare
    from clockwork_engine.reuse_search import late

    pipe = load_pipe()
    base = Engine.from_pipeline(pipe, config=EngineConfig(mode="full", attention_reuse=()))
    learned = os.path.join(DEMO_DIR, ADAPTOR_FOLDER)
    guidance = Engine.default_config("demo").guidance_scale if args.guidance is None else args.guidance
    for n in args.steps:
        kw = dict(steps=n, mode="clockwork")
        variants = {
            "diffusers": (DiffusersBaseline(pipe), dict(steps=n)),
            "deepcache_i2": (DeepCacheBaseline(pipe, 2), dict(steps=n)),
            "deepcache_i3": (DeepCacheBaseline(pipe, 3), dict(steps=n)),
            "engine_full": (base, dict(steps=n, mode="full")),
            "identity_adaptor": (base.with_config(mode="clockwork", adaptor="identity"), kw),
            "clockwork_fused_ops_off": (FusedOpsOff(base.with_config(mode="clockwork", adaptor=learned)), kw),
            "clockwork": (base.with_config(mode="clockwork", adaptor=learned), kw),
            "clockwork+reuse": (base.with_config(mode="clockwork", adaptor=learned,
                                             attention_reuse=late(max(1, n // 4), n)), kw),
        }
        if n == 8:
            for name in student_presets("demo"):
                student = Engine.from_pretrained("demo", preset=name)
                s_steps = student.config.steps
                variants[f"student_{name}"] = (student, dict(steps=s_steps, mode=student.config.mode))
        result = compare(variants, args.singles, args.pairs, guidance=guidance, latency_repeats=args.repeats,
                         reference="diffusers")
        write(f"e2e_{n}.json", {"command": "python " + " ".join(sys.argv), "steps": n, **result})
        pareto_plot(result, os.path.join(RESULTS, f"pareto_{n}.png"), n)


if __name__ == "__main__":
    main()
