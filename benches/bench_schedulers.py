"""Every scheduler name on the demo: parity with diffusers' StableDiffusionPipeline, and the
engine's sampling loop against diffusers' loop.

    python benches/bench_schedulers.py [--steps 8] [--repeats 10]

Parity: for each scheduler name (clockwork_engine.sampler.noise_schedulers.ALIASES, built from the demo's
scheduler config) x prediction type (epsilon, v_prediction) x CFG (off: scale 1; on: the
demo's scale), the max |engine - diffusers| of the final latents of two prompts, each row with
its own seeded CPU generator. The demo UNet is trained for epsilon: under v_prediction its
outputs are read as v, which checks the arithmetic, not image quality.
Float32 floor: diffusers against itself with every initial latent moved by one float32 ulp
(torch.nextafter; epsilon, CFG on): how far a difference of float32 rounding alone travels to
the final latents; the engine's difference is to be read against it.
Latency: full mode, batch 1, CFG on, the prompt's embeddings computed once for both (diffusers
is given prompt_embeds; the engine's prompt cache holds them), latents out: the sampling loop
and its model calls, no text encoding and no decode. Medians of interleaved repeats after a
warm-up, and the ratio diffusers / engine paired per round. Loop only: the same with the UNet
replaced by a stand-in that costs nothing (x -> x / 2): what each loop itself costs.
"""

from __future__ import annotations

import argparse
import copy
import sys

import diffusers
import torch
from common import interleaved, machine, write

from clockwork_engine import Engine
from clockwork_engine.demo.pipeline import assemble
from clockwork_engine.eval.compare import paired_speedup
from clockwork_engine.sampler import noise_schedulers

PROMPTS = ["a red circle", "a blue square above a green triangle"]


class NullUNet(torch.nn.Module):
    """Stands in for the UNet at no cost (output = input / 2), so that timing measures the loop."""

    def __init__(self, unet):
        super().__init__()
        self.config, self.anchor = unet.config, torch.nn.Parameter(torch.zeros(()))

    @property
    def dtype(self):
        return self.anchor.dtype

    @property
    def device(self):
        return self.anchor.device

    def forward(self, x, t, encoder_hidden_states=None, return_dict=True, **kwargs):
        out = x[:, : self.config.out_channels] * 0.5
        return (out,) if not return_dict else diffusers.models.unets.unet_2d_condition.UNet2DConditionOutput(out)


def scheduler_for(engine, name: str, prediction_type: str):
    s = noise_schedulers.from_name(name, engine.scheduler)
    return type(s).from_config(s.config, prediction_type=prediction_type)


def parity(engine, pipe, name: str, prediction_type: str, guidance: float, steps: int) -> float:
    sched = scheduler_for(engine, name, prediction_type)
    pipe.scheduler = copy.deepcopy(sched)
    ref = pipe(PROMPTS, num_inference_steps=steps, guidance_scale=guidance, output_type="latent",
               generator=[torch.Generator().manual_seed(s) for s in (1, 2)]).images
    got = engine.with_config(scheduler=copy.deepcopy(sched)).generate(
        PROMPTS, steps=steps, guidance_scale=guidance, seed=[1, 2], output="latent")
    return float((got - ref).abs().max())


def float32_floor(pipe, engine, name: str, guidance: float, steps: int) -> float:
    pipe.scheduler = scheduler_for(engine, name, "epsilon")
    pipe.scheduler.set_timesteps(steps)
    shape = (1, engine.unet.config.in_channels, engine.default_size // engine.vae_factor,
             engine.default_size // engine.vae_factor)
    outs = []
    for nudge in (False, True):
        gens = [torch.Generator().manual_seed(s) for s in (1, 2)]
        # the pipeline's own first draws, taken here so that its generators go on to the step noise
        noise = torch.cat([torch.randn(shape, generator=g) for g in gens]) * pipe.scheduler.init_noise_sigma
        outs.append(pipe(PROMPTS, num_inference_steps=steps, guidance_scale=guidance, output_type="latent",
                         latents=torch.nextafter(noise, noise + 1) if nudge else noise, generator=gens).images)
    return float((outs[0] - outs[1]).abs().max())


def loop_timings(base, pipe, sched, steps: int, guidance: float, repeats: int) -> dict:
    """Interleaved timings of both loops around a UNet stand-in that costs nothing."""
    null = NullUNet(base.unet)
    loop_pipe = assemble(null, base.vae, copy.deepcopy(sched), base.prompts.tokenizer, base.text_encoder)
    loop_pipe.set_progress_bar_config(disable=True)
    engine = Engine(null, base.vae, base.prompts.tokenizer, base.text_encoder, copy.deepcopy(sched),
                    config=base.config)
    embeds, negative = base.prompts.encode([PROMPTS[0]]), base.prompts.encode([""])
    return interleaved({
        "diffusers": lambda: loop_pipe(prompt_embeds=embeds, negative_prompt_embeds=negative, guidance_scale=guidance,
                                       num_inference_steps=steps, output_type="latent",
                                       generator=torch.Generator().manual_seed(0)),
        "engine": lambda: engine.generate(PROMPTS[0], steps=steps, guidance_scale=guidance, seed=0, output="latent"),
    }, repeats, warmup=3)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--names", default=None, help="comma-separated scheduler names (default: all short names)")
    ap.add_argument("--out", default="schedulers_demo.json")
    argv = sys.argv[1:] if argv is None else argv
    args = ap.parse_args(argv)

    base = Engine.from_pretrained("demo", config="full")
    pipe = assemble(base.unet, base.vae, copy.deepcopy(base.scheduler), base.prompts.tokenizer, base.text_encoder)
    pipe.set_progress_bar_config(disable=True)
    g = base.config.guidance_scale
    names = args.names.split(",") if args.names else sorted(noise_schedulers.ALIASES)
    rows = []
    with torch.no_grad():
        for name in names:
            row = {"scheduler": name, "class": noise_schedulers.ALIASES[name][0],
                   "evaluations": base.with_config(scheduler=name).runner.table(args.steps).num_steps, "max_abs_diff": {}}
            for pred in ("epsilon", "v_prediction"):
                for cfg, scale in (("cfg_off", 1.0), ("cfg_on", g)):
                    row["max_abs_diff"][f"{pred}/{cfg}"] = parity(base, pipe, name, pred, scale, args.steps)
            row["float32_floor"] = float32_floor(pipe, base, name, g, args.steps)
            rows.append(row)
            print(name, row["max_abs_diff"])

        prompt = PROMPTS[0]
        embeds, negative = base.prompts.encode([prompt]), base.prompts.encode([""])
        for row in rows:
            sched = scheduler_for(base, row["scheduler"], "epsilon")
            engine = base.with_config(scheduler=copy.deepcopy(sched))
            pipe.scheduler = copy.deepcopy(sched)
            fns = {
                "diffusers": lambda: pipe(prompt_embeds=embeds, negative_prompt_embeds=negative, guidance_scale=g,
                                          num_inference_steps=args.steps, output_type="latent",
                                          generator=torch.Generator().manual_seed(0)),
                "engine": lambda e=engine: e.generate(prompt, steps=args.steps, guidance_scale=g, seed=0,
                                                      output="latent"),
            }
            t = interleaved(fns, args.repeats, warmup=2)
            row["latency"] = {k: {"median_s": v["median_s"], "p25_s": v["p25_s"], "p75_s": v["p75_s"]}
                              for k, v in t.items()}
            row["speedup_median"] = t["diffusers"]["median_s"] / t["engine"]["median_s"]
            row["speedup_paired"] = paired_speedup(t, "diffusers", "engine")
            loop = loop_timings(base, pipe, sched, args.steps, g, 3 * args.repeats)
            row["loop_only_ms"] = {k: 1e3 * v["median_s"] for k, v in loop.items()}
            print(row["scheduler"], f"{row['speedup_median']:.3f}x", row["loop_only_ms"])

    write(args.out, {
        "command": " ".join(["python benches/bench_schedulers.py", *argv]),
        "steps": args.steps, "guidance": g, "repeats": args.repeats, "prompts": PROMPTS,
        "latency_setup": "demo, full mode, batch 1, CFG on, prompt embeddings precomputed for both, latents out",
        "loop_only_repeats": 3 * args.repeats,
        "rows": rows, "machine": machine(),
    })


if __name__ == "__main__":
    main()
