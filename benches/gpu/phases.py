"""The measured phases of the GPU check (harness.py runs them in order, each time-boxed).

  sd15          SD v1.5 architecture at 512x512: end-to-end latency of stock diffusers, the
                engine (eager step programs, CUDA graphs), clockwork (identity adaptor, the
                untrained 13.8M adaptor), clockwork + attention reuse; parity of the latents;
                sampling alone and the engine's cost per step beyond the graph replays
  profile       a torch.profiler trace of one clockwork request (step ranges, kernels)
  sdxl          SDXL base architecture at 1024x1024: stock diffusers, engine, clockwork
  sd15_compile  stock diffusers with torch.compile on its UNet, against stock and the engine

Every request: 8 DPM-Solver++ (2M) steps, CFG 7.5, batch 1, a prompt no call used before
(text encoding is timed), seed 0, an image tensor out (VAE decode timed). Each phase fills
its result dict as it goes and calls ctx.save(), so a run stopped at its limit keeps what it
measured.
"""

from __future__ import annotations

import gzip
import os
import shutil

import models
import torch
from timing import device_ms, measure, sync

from clockwork_engine import Engine, EngineConfig
from clockwork_engine.eval.compare import paired_speedup

STEPS, GUIDANCE = 8, 7.5
REUSE_STEPS = (6, 7)  # the last two steps reuse the maps of step 5
REUSE_BYTES = 4 * 2**30  # every layer's maps fit (SD v1.5 at 512x512, CFG: 2.7 GiB in fp16, attention.map_bytes)


class Prompts:
    """A new prompt per call: no call hits the engine's prompt cache (stock diffusers has none)."""

    def __init__(self):
        self.n = 0

    def __call__(self) -> str:
        self.n += 1
        return f"a photo of thing {self.n}"


def diffusers_call(pipe, size, prompts, **kw):
    return lambda: pipe(prompts(), num_inference_steps=STEPS, guidance_scale=GUIDANCE, height=size, width=size,
                        output_type="pt", generator=torch.Generator().manual_seed(0), **kw)


def engine_call(engine, size, prompts):
    return lambda: engine.generate(prompts(), steps=STEPS, guidance_scale=GUIDANCE, height=size, width=size, seed=0,
                                   output="pt")


def speedups(timings: dict, baseline: str = "diffusers") -> dict:
    base = timings[baseline]["median_s"]
    return {name: {"ratio_of_medians": base / t["median_s"], "paired": paired_speedup(timings, baseline, name)}
            for name, t in timings.items() if name != baseline}


def sd15_objects(ctx):
    """The SD v1.5 pipeline and its engines, built once per process: sd15 times them, profile
    and sd15_compile reuse them (and build them when a resumed run starts after sd15)."""
    if ctx.sd15 is None:
        s = ctx.settings
        pipe = models.sd15_pipeline(ctx.tmp, s.device, s.dtype, s.tiny)
        pipe.set_progress_bar_config(disable=True)
        full = Engine.from_pipeline(pipe, config=EngineConfig(steps=STEPS, guidance_scale=GUIDANCE, backend="auto"))
        adaptor = models.untrained_adaptor(pipe.unet, ctx.tmp, STEPS, s.tiny)
        engines = {
            "engine_full_eager": full.with_config(backend="cpu"),  # the same step programs run eagerly, on the GPU
            "engine_full": full,  # CUDA graphs on a GPU
            "clockwork_identity": full.with_config(mode="clockwork", adaptor="identity"),
            "clockwork_adaptor": full.with_config(mode="clockwork", adaptor=adaptor),
            # Installs the reuse processors on the shared UNet; with no reuse action they call the
            # original (SDPA) processor, so the other variants compute as before.
            "clockwork_reuse": full.with_config(mode="clockwork", adaptor="identity", attention_reuse=REUSE_STEPS,
                                                max_attention_bytes=REUSE_BYTES),
        }
        ctx.sd15 = dict(pipe=pipe, engines=engines)
    return ctx.sd15["pipe"], ctx.sd15["engines"]


def sd15(ctx, result: dict):
    s = ctx.settings
    pipe, engines = sd15_objects(ctx)
    full, size = engines["engine_full"], s.sd15_size
    result.update(what=f"SD v1.5 architecture (random weights), {size}x{size}, {s.dtype_name}, {STEPS} DPM++ steps, "
                       f"CFG {GUIDANCE}, batch 1, a new prompt per call, image tensor out",
                  backend=full.graphs.backend, attention_processor=_processor_name(pipe.unet),
                  schedules={name: e.schedule(STEPS, e.config.mode) for name, e in engines.items()},
                  adaptor_parameters=sum(p.numel() for p in engines["clockwork_adaptor"].adaptor.parameters()))
    prompts = Prompts()
    fns = {"diffusers": diffusers_call(pipe, size, prompts)}
    fns |= {name: engine_call(e, size, prompts) for name, e in engines.items()}
    timings = measure(fns, s.warmup, ctx.budget(s.sd15_timing_s), s.min_repeats, s.repeats)
    result.update(timings=timings, speedup_vs_diffusers=speedups(timings))
    reuse = engines["clockwork_reuse"].reuse
    result["reuse"] = {"steps": list(REUSE_STEPS), "layers_cached": len(reuse.maps), "layers_over_cap": len(
        reuse.over_cap), "cached_bytes": reuse.nbytes()}
    ctx.save()
    result["parity"] = parity(pipe, engines, size)
    ctx.save()
    result["overhead"] = overhead(pipe, full, size, ctx)


def _processor_name(unet) -> str:
    """The attention processor stock diffusers runs (under the reuse wrapper, its original)."""
    proc = next(iter(unet.attn_processors.values()))
    return type(getattr(proc, "original", proc)).__name__


def parity(pipe, engines, size) -> dict:
    """Max |difference| of final latents, same prompt and seed: CUDA graphs vs the eager
    programs (same GPU, same kernels), and the engine vs stock diffusers."""
    kw = dict(steps=STEPS, guidance_scale=GUIDANCE, height=size, width=size, seed=0, output="latent")
    prompt = "a red circle"
    ref = pipe(prompt, num_inference_steps=STEPS, guidance_scale=GUIDANCE, height=size, width=size,
               output_type="latent", generator=torch.Generator().manual_seed(0)).images.float()
    graphs = engines["engine_full"].generate(prompt, **kw).float()
    eager = engines["engine_full_eager"].generate(prompt, **kw).float()
    return {"graphs_vs_eager_max_abs": (graphs - eager).abs().max().item(),
            "engine_vs_diffusers_max_abs": (graphs - ref).abs().max().item(),
            "latents_max_abs": ref.abs().max().item()}


def overhead(pipe, engine, size, ctx) -> dict:
    """Sampling alone (a cached prompt, latents out) against the device time of its model
    calls: the engine's CUDA-graph replay of a full step, diffusers' eager UNet forward."""
    s = ctx.settings
    prompt = "a red circle"
    with torch.no_grad():
        cond, uncond = pipe.encode_prompt(prompt, pipe.device, 1, True, "")
    fns = {
        "diffusers": lambda: pipe(prompt_embeds=cond, negative_prompt_embeds=uncond, num_inference_steps=STEPS,
                                  guidance_scale=GUIDANCE, height=size, width=size, output_type="latent",
                                  generator=torch.Generator().manual_seed(0)),
        "engine_full": lambda: engine.generate(prompt, steps=STEPS, guidance_scale=GUIDANCE, height=size,
                                               width=size, seed=0, output="latent"),
    }
    timings = measure(fns, s.warmup, ctx.budget(s.overhead_timing_s), s.min_repeats, s.repeats)
    # The program set of this request's key (internal: a bench reads it to time one replay).
    entry = next(e for key, e in engine.graphs._entries.items() if key[1] == size and key[0] == 1)
    latent = size // 8
    x = torch.randn(2, 4, latent, latent, device=pipe.device, dtype=pipe.unet.dtype)
    text, t = torch.cat([uncond, cond]), torch.tensor(500, device=pipe.device)
    with torch.no_grad():
        replay_ms = device_ms(entry.programs["full"].run, 20)
        unet_ms = device_ms(lambda: pipe.unet(x, t, encoder_hidden_states=text, return_dict=False), 10)
    sync()
    engine_ms, diffusers_ms = (timings[k]["median_s"] * 1e3 for k in ("engine_full", "diffusers"))
    return {"what": "sampling alone: a cached prompt (diffusers given its embeddings), latents out",
            "timings": timings, "full_step_replay_ms": replay_ms, "unet_forward_eager_ms": unet_ms,
            "engine_ms_per_step_beyond_replays": (engine_ms - STEPS * replay_ms) / STEPS,
            "diffusers_ms_per_step_beyond_unet": (diffusers_ms - STEPS * unet_ms) / STEPS}


def profile(ctx, result: dict):
    from clockwork_engine.profile import profile as profile_request

    s = ctx.settings
    engine = sd15_objects(ctx)[1]["clockwork_adaptor"]
    raw = os.path.join(ctx.out, "trace_clockwork_sd15.json")
    table = profile_request(engine, "a red circle", raw, steps=STEPS, guidance_scale=GUIDANCE, height=s.sd15_size,
                            width=s.sd15_size, seed=0, mode="clockwork")
    with open(raw, "rb") as src, gzip.open(raw + ".gz", "wb") as dst:  # ~10x smaller; Perfetto opens .json.gz
        shutil.copyfileobj(src, dst)
    os.remove(raw)
    result.update(table, trace=os.path.basename(raw) + ".gz",
                  what="one clockwork request (the untrained adaptor), SD v1.5 architecture; step ms are host "
                       "time of each step's range (under CUDA graphs: the replay launch)")


def sdxl(ctx, result: dict):
    s = ctx.settings
    pipe = models.sdxl_pipeline(ctx.tmp, s.device, s.dtype, s.tiny)
    pipe.set_progress_bar_config(disable=True)
    size = s.sdxl_size
    full = Engine.from_pipeline(pipe, config=EngineConfig(steps=STEPS, guidance_scale=GUIDANCE, backend="auto"))
    identity = full.with_config(mode="clockwork", adaptor="identity")
    result["what"] = (f"SDXL base architecture (random weights), {size}x{size}, {s.dtype_name}, {STEPS} DPM++ steps, "
                      f"CFG {GUIDANCE}, batch 1, a new prompt per call, image tensor out")
    prompts = Prompts()
    fns = {"diffusers": diffusers_call(pipe, size, prompts), "engine_full": engine_call(full, size, prompts),
           "clockwork_identity": engine_call(identity, size, prompts)}
    timings = measure(fns, s.warmup, ctx.budget(s.sdxl_timing_s), s.min_repeats, s.sdxl_repeats)
    result.update(timings=timings, speedup_vs_diffusers=speedups(timings),
                  schedule_clockwork=identity.schedule(STEPS, "clockwork"))
    ctx.save()
    ref = pipe("a red circle", num_inference_steps=STEPS, guidance_scale=GUIDANCE, height=size, width=size,
               output_type="latent", generator=torch.Generator().manual_seed(0)).images.float()
    got = full.generate("a red circle", steps=STEPS, guidance_scale=GUIDANCE, height=size, width=size, seed=0,
                        output="latent").float()
    result["parity"] = {"engine_vs_diffusers_max_abs": (got - ref).abs().max().item(),
                        "latents_max_abs": ref.abs().max().item()}
    del pipe, full, identity, fns
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def sd15_compile(ctx, result: dict):
    """torch.compile on diffusers' UNet as diffusers documents it (mode reduce-overhead,
    fullgraph); if that fails, the default mode. Compiling happens in the warm-up calls."""
    from diffusers import StableDiffusionPipeline

    s = ctx.settings
    pipe, engines = sd15_objects(ctx)
    engine = engines["engine_full"]
    size = s.sd15_size
    errors = {}
    for options in s.compile_options:
        try:
            compiled = StableDiffusionPipeline(**{**pipe.components, "unet": torch.compile(pipe.unet, **options)},
                                               requires_safety_checker=False)
            compiled.set_progress_bar_config(disable=True)
            prompts = Prompts()
            fns = {"diffusers": diffusers_call(pipe, size, prompts),
                   "diffusers_compiled": diffusers_call(compiled, size, prompts),
                   "engine_full": engine_call(engine, size, prompts)}
            timings = measure(fns, s.compile_warmup, ctx.budget(s.compile_timing_s), s.min_repeats, s.repeats)
        except Exception as e:  # recorded, then the next options are tried
            errors[str(options)] = f"{type(e).__name__}: {e}"[:2000]
            torch._dynamo.reset()
            continue
        result.update(compile_options={k: str(v) for k, v in options.items()}, timings=timings,
                      speedup_vs_diffusers=speedups(timings),
                      compile_first_call_s=timings["diffusers_compiled"]["warmup_s"][0])
        break
    if errors:
        result["errors"] = errors
        if "timings" not in result:
            raise RuntimeError(f"torch.compile failed with every option set: {errors}")
