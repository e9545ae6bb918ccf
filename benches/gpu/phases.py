"""The measured phases of the GPU check (harness.py runs them in order, each time-boxed).

The peer is stock diffusers with torch.compile on its UNet (mode reduce-overhead, fullgraph: what
diffusers documents), timed in the same process and interleaved with every engine variant. The
engine's cuda backend compiles its step programs with inductor and captures them as CUDA graphs
(compile on, the default); "_uncompiled" variants capture the same programs uncompiled.

  sd15        SD v1.5 architecture at 512x512, batch 1: stock diffusers, diffusers + compile, the
              engine (uncompiled and compiled), clockwork (identity adaptor uncompiled and
              compiled, the untrained 13.8M adaptor compiled), clockwork + attention reuse
              (uncompiled); parity of the latents (compiled vs uncompiled, engine vs diffusers);
              one step's graph replay (CUDA events) and sampling alone
  profile     a torch.profiler trace of one compiled clockwork request
  batch4      the same at batch 4 (throughput): diffusers + compile, engine, clockwork
  cold_start  `clockwork compile` on a saved copy of the model, then `clockwork serve` from a new
              process (empty inductor caches) to its first answered request, with the artifacts
              and without them
  sdxl        SDXL base architecture at 1024x1024: stock diffusers, diffusers + compile, the
              engine and clockwork (identity), compiled
  serving     Poisson arrivals against the engine (uncompiled graphs: lanes' buckets are not
              compiled ahead): step-level continuous batching vs one request at a time
  options     inductor's option sets (EngineConfig.inductor) and a channels-last UNet, each
              against the default on the compiled engine's full mode; the channels-last UNet
              uncompiled too

Every request: 8 DPM-Solver++ (2M) steps, CFG 7.5, a prompt no call used before (text encoding
is timed), seed 0, an image tensor out (VAE decode timed). Each phase fills its result dict as
it goes and calls ctx.save(), so a run stopped at its limit keeps what it measured.
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
import urllib.request

import models
import torch
from timing import device_ms, measure, sync

from clockwork_engine import Engine, EngineConfig
from clockwork_engine.eval.compare import paired_speedup

STEPS, GUIDANCE = 8, 7.5
REUSE_STEPS = (6, 7)  # the last two steps reuse the maps of step 5
REUSE_BYTES = 4 * 2**30  # every layer's maps fit (SD v1.5 at 512x512, CFG: 2.7 GiB in fp16, attention.map_bytes)
PEER = "diffusers_compiled"


class Prompts:
    """A new prompt per call: no call hits the engine's prompt cache (stock diffusers has none)."""

    def __init__(self):
        self.n = 0

    def __call__(self, batch: int = 1):
        self.n += 1
        prompts = [f"a photo of thing {self.n} number {k}" for k in range(batch)]
        return prompts[0] if batch == 1 else prompts


def diffusers_call(pipe, size, prompts, batch=1):
    return lambda: pipe(prompts(batch), num_inference_steps=STEPS, guidance_scale=GUIDANCE, height=size, width=size,
                        output_type="pt", generator=torch.Generator().manual_seed(0))


def engine_call(engine, size, prompts, batch=1):
    return lambda: engine.generate(prompts(batch), steps=STEPS, guidance_scale=GUIDANCE, height=size, width=size,
                                   seed=0, output="pt")


def speedups(timings: dict, baseline: str) -> dict:
    base = timings[baseline]["median_s"]
    return {name: {"ratio_of_medians": base / t["median_s"], "paired": paired_speedup(timings, baseline, name)}
            for name, t in timings.items() if name != baseline}


def compiled_pipe(pipe, ctx):
    """diffusers' pipeline with torch.compile on its UNet (the first option set of the settings;
    compiling happens in the warm-up calls)."""
    options = ctx.settings.compile_options[0]
    compiled = type(pipe)(**{**pipe.components, "unet": torch.compile(pipe.unet, **options)})
    compiled.set_progress_bar_config(disable=True)
    return compiled, {k: str(v) for k, v in options.items()}


def engines_over(pipe, adaptor=None, reuse=False) -> dict:
    """The engine variants over one pipeline (they share its weights and the compiled text
    encoder and decoder): full and clockwork, compiled and uncompiled."""
    full = Engine.from_pipeline(pipe, config=EngineConfig(steps=STEPS, guidance_scale=GUIDANCE, backend="auto"))
    engines = {"engine_full_uncompiled": full.with_config(compile=False), "engine_full": full,
               "clockwork_identity_uncompiled": full.with_config(mode="clockwork", adaptor="identity", compile=False),
               "clockwork_identity": full.with_config(mode="clockwork", adaptor="identity")}
    if adaptor is not None:
        engines["clockwork_adaptor"] = full.with_config(mode="clockwork", adaptor=adaptor)
    if reuse:
        # Installs the reuse processors on the shared UNet; with no reuse action they call the
        # original (SDPA) processor, so the other variants compute as before.
        engines["clockwork_reuse_uncompiled"] = full.with_config(
            mode="clockwork", adaptor="identity", attention_reuse=REUSE_STEPS, max_attention_bytes=REUSE_BYTES,
            compile=False)
    return engines


def sd15_objects(ctx):
    """The SD v1.5 pipeline, its compiled peer and the engines, built once per process: sd15
    times them, later phases reuse them (and build them when a resumed run starts after sd15)."""
    if ctx.sd15 is None:
        s = ctx.settings
        pipe = models.sd15_pipeline(ctx.tmp, s.device, s.dtype, s.tiny)
        pipe.set_progress_bar_config(disable=True)
        adaptor = models.untrained_adaptor(pipe.unet, ctx.tmp, STEPS, s.tiny)
        peer, options = compiled_pipe(pipe, ctx)
        ctx.sd15 = dict(pipe=pipe, peer=peer, compile_options=options,
                        engines=engines_over(pipe, adaptor=adaptor, reuse=True))
    return ctx.sd15["pipe"], ctx.sd15["peer"], ctx.sd15["engines"]


def first_calls(timings: dict) -> dict:
    """Seconds of each variant's first call: where compiling (and capturing) happens."""
    return {name: t["warmup_s"][0] for name, t in timings.items()}


def sd15(ctx, result: dict):
    s = ctx.settings
    pipe, peer, engines = sd15_objects(ctx)
    size = s.sd15_size
    result.update(what=f"SD v1.5 architecture (random weights), {size}x{size}, {s.dtype_name}, {STEPS} DPM++ steps, "
                       f"CFG {GUIDANCE}, batch 1, a new prompt per call, image tensor out",
                  backend=engines["engine_full"].graphs.backend, attention_processor=_processor_name(pipe.unet),
                  peer=PEER, compile_options=ctx.sd15["compile_options"],
                  inductor=engines["engine_full"].config.inductor,
                  schedules={name: e.step_kinds(STEPS, e.config.mode) for name, e in engines.items()},
                  adaptor_parameters=sum(p.numel() for p in engines["clockwork_adaptor"].adaptor.parameters()))
    prompts = Prompts()
    fns = {"diffusers": diffusers_call(pipe, size, prompts), PEER: diffusers_call(peer, size, prompts)}
    fns |= {name: engine_call(e, size, prompts) for name, e in engines.items()}
    timings = measure(fns, s.compile_warmup, ctx.budget(s.sd15_timing_s), s.min_repeats, s.repeats,
                      before_timing=ctx.quiet)
    result.update(timings=timings, first_call_s=first_calls(timings), speedup_vs_peer=speedups(timings, PEER),
                  speedup_vs_diffusers=speedups(timings, "diffusers"))
    reuse = engines["clockwork_reuse_uncompiled"].reuse
    result["reuse"] = {"steps": list(REUSE_STEPS), "layers_cached": len(reuse.maps), "layers_over_cap": len(
        reuse.over_cap), "cached_bytes": reuse.nbytes()}
    ctx.save()
    result["parity"] = parity(pipe, peer, engines, size)
    ctx.save()
    result["overhead"] = overhead(engines, size, ctx)


def _processor_name(unet) -> str:
    """The attention processor stock diffusers runs (under the reuse wrapper, its original)."""
    proc = next(iter(unet.attn_processors.values()))
    return type(getattr(proc, "original", proc)).__name__


def parity(pipe, peer, engines, size) -> dict:
    """Max |difference| of final latents, same prompt and seed: compiled vs uncompiled programs
    (both CUDA graphs), the engine vs stock diffusers, diffusers + compile vs stock diffusers."""
    kw = dict(steps=STEPS, guidance_scale=GUIDANCE, height=size, width=size, seed=0, output="latent")
    prompt = "a red circle"

    def stock(p):
        return p(prompt, num_inference_steps=STEPS, guidance_scale=GUIDANCE, height=size, width=size,
                 output_type="latent", generator=torch.Generator().manual_seed(0)).images.float()

    ref = stock(pipe)
    got = {name: engines[name].generate(prompt, **kw).float() for name in
           ("engine_full", "engine_full_uncompiled", "clockwork_identity", "clockwork_identity_uncompiled")}
    full_diff = (got["engine_full"] - got["engine_full_uncompiled"]).abs().max().item()
    return {"compiled_vs_uncompiled_full_max_abs": full_diff,
            "compiled_vs_uncompiled_clockwork_max_abs":
                (got["clockwork_identity"] - got["clockwork_identity_uncompiled"]).abs().max().item(),
            "engine_vs_diffusers_max_abs": (got["engine_full_uncompiled"] - ref).abs().max().item(),
            "compiled_engine_vs_diffusers_max_abs": (got["engine_full"] - ref).abs().max().item(),
            "diffusers_compiled_vs_diffusers_max_abs": (stock(peer) - ref).abs().max().item(),
            "latents_max_abs": ref.abs().max().item()}


def _entry(engine, size, batch=1):
    """The program set of a request's key (internal: a bench reads it to time one replay)."""
    key = next(key for key in engine.graphs.keys() if key[1] == size and key[0] == batch)
    return engine.graphs.programs(key)


def overhead(engines, size, ctx) -> dict:
    """Device time of one step's graph replay, compiled and uncompiled, and sampling alone (a
    cached prompt, latents out) against 8 replays."""
    s = ctx.settings
    prompt = "a red circle"
    full = engines["engine_full"]
    fns = {"engine_full": lambda: full.generate(prompt, steps=STEPS, guidance_scale=GUIDANCE, height=size, width=size,
                                                seed=0, output="latent")}
    timings = measure(fns, s.warmup, ctx.budget(s.overhead_timing_s), s.min_repeats, s.repeats)
    with torch.no_grad():
        replay = {f"{name}:{kind}": device_ms(_entry(engines[name], size)[kind].run, 20)
                  for name, kind in (("engine_full", "full"), ("engine_full_uncompiled", "full"),
                                     ("clockwork_identity", "clockwork.adaptor"),
                                     ("clockwork_identity_uncompiled", "clockwork.adaptor"))}
    sync()
    engine_ms = timings["engine_full"]["median_s"] * 1e3
    return {"what": "sampling alone: a cached prompt, latents out; replay_ms: one step program's CUDA graph",
            "timings": timings, "replay_ms": replay, "full_step_replay_ms": replay["engine_full:full"],
            "engine_ms_per_step_beyond_replays": (engine_ms - STEPS * replay["engine_full:full"]) / STEPS}


def profile(ctx, result: dict):
    from clockwork_engine.tools.profile import profile as profile_request

    s = ctx.settings
    engine = sd15_objects(ctx)[2]["clockwork_adaptor"]
    raw = os.path.join(ctx.out, "trace_clockwork_sd15.json")
    table = profile_request(engine, "a red circle", raw, steps=STEPS, guidance_scale=GUIDANCE, height=s.sd15_size,
                            width=s.sd15_size, seed=0, mode="clockwork")
    with open(raw, "rb") as src, gzip.open(raw + ".gz", "wb") as dst:  # ~10x smaller; Perfetto opens .json.gz
        shutil.copyfileobj(src, dst)
    os.remove(raw)
    result.update(table, trace=os.path.basename(raw) + ".gz",
                  what="one clockwork request (the untrained adaptor, compiled step programs), SD v1.5 "
                       "architecture; step ms are host time of each step's range (under CUDA graphs: the replay "
                       "launch)")


def batch4(ctx, result: dict):
    s = ctx.settings
    pipe, peer, engines = sd15_objects(ctx)
    size, batch = s.sd15_size, 4
    result.update(what=f"SD v1.5 architecture, {size}x{size}, {s.dtype_name}, {STEPS} DPM++ steps, CFG {GUIDANCE}, "
                       f"batch {batch} (4 prompts a call), image tensors out", batch=batch, peer=PEER)
    prompts = Prompts()
    fns = {"diffusers": diffusers_call(pipe, size, prompts, batch), PEER: diffusers_call(peer, size, prompts, batch)}
    fns |= {name: engine_call(engines[name], size, prompts, batch) for name in ("engine_full", "clockwork_identity")}
    timings = measure(fns, s.compile_warmup, ctx.budget(s.batch_timing_s), s.min_repeats, s.repeats)
    result.update(timings=timings, first_call_s=first_calls(timings), speedup_vs_peer=speedups(timings, PEER),
                  images_per_s={name: batch / t["median_s"] for name, t in timings.items()})


def _post(url: str, body: dict, timeout: float) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def serve_to_first_answer(model_dir: str, env: dict, ctx, timeout: float) -> dict:
    """Start `clockwork serve` in a new process and time it to its first answered request."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "clockwork_engine.tools.cli", "serve", "--model", model_dir, "--port", str(port),
           "--dtype", ctx.settings.dtype_name, "--timeout", str(int(timeout))]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        while True:  # until the HTTP port answers
            if proc.poll() is not None:
                raise RuntimeError(f"clockwork serve exited with {proc.returncode}: {proc.stderr.read()[-2000:]}")
            if time.perf_counter() - t0 > timeout:
                raise TimeoutError(f"clockwork serve did not listen within {timeout} s")
            try:
                urllib.request.urlopen(url + "/healthz", timeout=1).read()
                break
            except OSError:
                time.sleep(0.1)
        listening = time.perf_counter() - t0
        size = ctx.settings.sd15_size
        body = {"prompt": "a red circle", "size": f"{size}x{size}", "seed": 0, "steps": STEPS,
                "guidance_scale": GUIDANCE}
        answer = _post(url + "/v1/images/generations", body, timeout)
        first = time.perf_counter() - t0
        t1 = time.perf_counter()
        _post(url + "/v1/images/generations", {**body, "prompt": "a blue square"}, timeout)
        second = time.perf_counter() - t1
        png = base64.b64decode(answer["data"][0]["b64_json"])
        return {"listening_s": round(listening, 2), "first_answer_s": round(first, 2),
                "second_request_s": round(second, 3), "png_bytes": len(png)}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def cold_start(ctx, result: dict):
    """The model saved to disk; `clockwork compile` prepares its artifacts (in this process's warm
    inductor caches); `clockwork serve` then starts with empty caches, with and without them."""
    s = ctx.settings
    pipe = sd15_objects(ctx)[0]
    model_dir = str(ctx.tmp / "sd15_saved")
    pipe.save_pretrained(model_dir)
    size = s.sd15_size
    result["what"] = (f"clockwork serve --model DIR --dtype {s.dtype_name} (full mode, step batching), a new process "
                      f"with empty inductor caches, to its first answered {size}x{size} request ({STEPS} steps, "
                      f"CFG {GUIDANCE}; process start, imports, loading, compiling or loading compiled code, capture, "
                      "sampling, decoding, PNG)")
    base_env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if s.device == "cuda":
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "clockwork_engine.tools.cli", "compile", "--model", model_dir,
                               "--sizes", f"{size}x{size}", "--batch", "1", "--dtype", s.dtype_name],
                              env=base_env, capture_output=True, text=True, timeout=max(60, ctx.deadline.left()))
        if proc.returncode != 0:
            raise RuntimeError(f"clockwork compile failed: {proc.stderr[-3000:]}")
        with open(os.path.join(model_dir, "compiled", "manifest.json")) as f:
            manifest = json.load(f)
        result["compile_command"] = {"seconds": round(time.perf_counter() - t0, 1), "stdout": proc.stdout[-1000:],
                                     "artifact_bytes": manifest["bytes"], "entries": manifest["entries"]}
        ctx.save()
    runs = {"with_artifacts": os.path.isdir(os.path.join(model_dir, "compiled")), "without_artifacts": False}
    for name, with_artifacts in runs.items():
        if name == "with_artifacts" and not with_artifacts:
            result[name] = {"skipped": "no artifacts: clockwork compile runs on a GPU only"}
            continue
        if name == "without_artifacts":
            if ctx.deadline.left() < s.cold_compile_need_s:
                result[name] = {"skipped": f"{ctx.deadline.left():.0f} s left, needs {s.cold_compile_need_s}"}
                continue
            if os.path.isdir(os.path.join(model_dir, "compiled")):
                shutil.move(os.path.join(model_dir, "compiled"), str(ctx.tmp / "compiled_aside"))
        cache = ctx.tmp / f"inductor_cache_{name}"  # empty: only the artifacts (if any) fill it
        env = {**base_env, "TORCHINDUCTOR_CACHE_DIR": str(cache), "TRITON_CACHE_DIR": str(cache / "triton")}
        result[name] = serve_to_first_answer(model_dir, env, ctx, timeout=max(60.0, ctx.deadline.left() - 10))
        ctx.save()


def sdxl(ctx, result: dict):
    s = ctx.settings
    pipe = models.sdxl_pipeline(ctx.tmp, s.device, s.dtype, s.tiny)
    pipe.set_progress_bar_config(disable=True)
    size = s.sdxl_size
    peer, options = compiled_pipe(pipe, ctx)
    engines = engines_over(pipe)
    for name in ("engine_full_uncompiled", "clockwork_identity_uncompiled"):  # timed before; not again here
        engines.pop(name)
    result.update(what=f"SDXL base architecture (random weights), {size}x{size}, {s.dtype_name}, {STEPS} DPM++ steps, "
                       f"CFG {GUIDANCE}, batch 1, a new prompt per call, image tensor out", peer=PEER,
                  compile_options=options)
    prompts = Prompts()
    fns = {"diffusers": diffusers_call(pipe, size, prompts), PEER: diffusers_call(peer, size, prompts)}
    fns |= {name: engine_call(e, size, prompts) for name, e in engines.items()}
    timings = measure(fns, s.compile_warmup, ctx.budget(s.sdxl_timing_s), s.min_repeats, s.sdxl_repeats)
    result.update(timings=timings, first_call_s=first_calls(timings), speedup_vs_peer=speedups(timings, PEER),
                  speedup_vs_diffusers=speedups(timings, "diffusers"),
                  schedule_clockwork=engines["clockwork_identity"].step_kinds(STEPS, "clockwork"))
    ctx.save()
    ref = pipe("a red circle", num_inference_steps=STEPS, guidance_scale=GUIDANCE, height=size, width=size,
               output_type="latent", generator=torch.Generator().manual_seed(0)).images.float()
    got = engines["engine_full"].generate("a red circle", steps=STEPS, guidance_scale=GUIDANCE, height=size,
                                          width=size, seed=0, output="latent").float()
    result["parity"] = {"compiled_engine_vs_diffusers_max_abs": (got - ref).abs().max().item(),
                        "latents_max_abs": ref.abs().max().item()}
    del pipe, peer, engines, fns
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# diffusers' caches on the SD3 transformer (eval/diffusers_caches.py), each at its published default
# or the setting its docs show; MagCache calibrated on this pipeline first. FirstBlockCache does
# not run on SD3 (its last joint block returns no text stream).
SD3_CACHES = {"taylorseer_i2": ("taylorseer", dict(cache_interval=2, disable_cache_before_step=1)),
              "pab_2": ("pab", dict(spatial_attention_block_skip_range=2,
                                    spatial_attention_timestep_skip_range=(100, 800))),
              "faster_2": ("faster", dict(spatial_attention_block_skip_range=2)),
              "mag_0.06": ("mag", dict(threshold=0.06))}


def sd35(ctx, result: dict):
    """SD3.5 medium: stock diffusers, diffusers with each of its caches (a copy of the transformer
    each: their hooks stay on it), the engine (compiled CUDA graphs) full and clockwork with the
    identity adaptor, interleaved."""
    import copy

    from clockwork_engine.eval import diffusers_caches

    s = ctx.settings
    pipe = models.sd35_pipeline(ctx.tmp, s.device, s.dtype, s.tiny)
    pipe.set_progress_bar_config(disable=True)
    size = s.sd15_size
    result.update(what=f"SD3.5 medium architecture (random weights), {size}x{size}, {s.dtype_name}, {STEPS} "
                       f"flow-match Euler steps (shift 3), CFG {GUIDANCE}, batch 1, no T5, a new prompt per call, "
                       "image tensor out")
    call = dict(prompt="a red circle", guidance_scale=GUIDANCE, height=size, width=size, output_type="latent",
                generator=torch.Generator().manual_seed(0))
    ratios = diffusers_caches.calibrate_mag(pipe, STEPS, **call)
    prompts = Prompts()
    fns, caches = {"diffusers": diffusers_call(pipe, size, prompts)}, {}
    for name, (kind, settings) in SD3_CACHES.items():
        peer = type(pipe)(**{**pipe.components, "transformer": copy.deepcopy(pipe.transformer)})
        peer.set_progress_bar_config(disable=True)
        caches[name] = diffusers_caches.CachedTransformer(peer.transformer, kind, STEPS,
                                                          mag_ratios=ratios if kind == "mag" else None, **settings)
        fns[f"diffusers_{name}"] = _reset_first(caches[name], diffusers_call(peer, size, prompts))
    full = _time_against_peers(ctx, pipe, size, fns, prompts, result)
    result.update(caches={name: {"kind": kind, **settings} for name, (kind, settings) in SD3_CACHES.items()},
                  mag_ratios=ratios)
    ctx.save()
    ref = pipe(num_inference_steps=STEPS, **{**call, "generator": torch.Generator().manual_seed(0)}).images.float()
    got = full.generate("a red circle", steps=STEPS, guidance_scale=GUIDANCE, height=size, width=size, seed=0,
                        output="latent").float()
    result["parity"] = {"compiled_engine_vs_diffusers_max_abs": (got - ref).abs().max().item(),
                        "latents_max_abs": ref.abs().max().item()}
    del pipe, full, fns, caches
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# diffusers' caches on Flux, enabled around their own calls (the transformer is shared): FluxPipeline
# drives them itself (its cache_context and current_timestep)
FLUX_CACHES = {"first_block_0.08": ("FirstBlockCacheConfig", dict(threshold=0.08)),
               "taylorseer_i2": ("TaylorSeerCacheConfig", dict(cache_interval=2, disable_cache_before_step=1))}


def flux(ctx, result: dict):
    """FLUX.1-dev architecture (random weights, bf16): stock diffusers, diffusers with
    FirstBlockCache and TaylorSeer, the engine full and clockwork (identity adaptor), interleaved."""
    from diffusers import hooks

    s = ctx.settings
    dtype = s.dtype if s.tiny else torch.bfloat16
    pipe = models.flux_pipeline(ctx.tmp, s.device, dtype, s.tiny)
    pipe.set_progress_bar_config(disable=True)
    size = s.sdxl_size
    result.update(what=f"FLUX.1-dev architecture (random weights), {size}x{size}, {dtype}, {STEPS} flow-match Euler "
                       f"steps, guidance embedding {GUIDANCE}, batch 1, a new prompt per call, image tensor out",
                  caches={name: {"config": cls, **kw} for name, (cls, kw) in FLUX_CACHES.items()})
    prompts = Prompts()
    fns = {"diffusers": diffusers_call(pipe, size, prompts)}
    for name, (cls, kw) in FLUX_CACHES.items():
        fns[f"diffusers_{name}"] = _cache_on(pipe.transformer, getattr(hooks, cls)(**kw),
                                             diffusers_call(pipe, size, prompts))
    full = _time_against_peers(ctx, pipe, size, fns, prompts, result)
    ctx.save()
    ref = pipe("a red circle", num_inference_steps=STEPS, guidance_scale=GUIDANCE, height=size, width=size,
               output_type="latent", generator=torch.Generator().manual_seed(0)).images.float()
    got = full.generate("a red circle", steps=STEPS, guidance_scale=GUIDANCE, height=size, width=size, seed=0,
                        output="latent").float()
    from clockwork_engine.models.flux import pack

    result["parity"] = {"compiled_engine_vs_diffusers_max_abs": (pack(got[None]) - ref).abs().max().item(),
                        "latents_max_abs": ref.abs().max().item()}
    del pipe, full, fns
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _time_against_peers(ctx, pipe, size: int, fns, prompts, result: dict):
    """The engine (compiled CUDA graphs) full and clockwork with the identity adaptor, timed
    interleaved with the peers' calls `fns`; returns the full-mode engine."""
    s = ctx.settings
    full = Engine.from_pipeline(pipe, config=EngineConfig(steps=STEPS, guidance_scale=GUIDANCE, backend="auto"))
    engines = {"engine_full": full, "clockwork_identity": full.with_config(mode="clockwork", adaptor="identity")}
    fns = fns | {name: engine_call(e, size, prompts) for name, e in engines.items()}
    timings = measure(fns, s.compile_warmup, ctx.budget(s.sdxl_timing_s), s.min_repeats, s.sdxl_repeats)
    result.update(timings=timings, first_call_s=first_calls(timings),
                  speedup_vs_diffusers=speedups(timings, "diffusers"),
                  schedule_clockwork=engines["clockwork_identity"].step_kinds(STEPS, "clockwork"))
    return full


def _cache_on(transformer, config, fn):
    """fn with a diffusers cache enabled on the (shared) transformer for its own call only."""
    def call():
        transformer.enable_cache(config)
        try:
            return fn()
        finally:
            transformer.disable_cache()

    return call


def _reset_first(cache, fn):
    def call():
        cache.reset()  # no cache state of the last image survives
        return fn()

    return call


def serving(ctx, result: dict):
    """Open-loop Poisson arrivals from threads calling generate(): step-level continuous
    batching against one request at a time (batching off), the same arrival times for both."""
    s = ctx.settings
    pipe = sd15_objects(ctx)[0]
    base = Engine.from_pipeline(pipe, config=EngineConfig(steps=STEPS, guidance_scale=GUIDANCE, backend="auto",
                                                          compile=False, batch_buckets=(1, 2, 4, 8)))
    size = s.sd15_size
    one = engine_call(base, size, Prompts())
    one(), one()  # captured; the service time of one request alone
    sync()
    t0 = time.perf_counter()
    one()
    sync()
    service_s = time.perf_counter() - t0
    rate = s.serve_load / service_s  # offered requests per second: serve_load x the serialized capacity
    rng = random.Random(0)
    arrivals = []
    t = 0.0
    for _ in range(s.serve_requests):
        t += rng.expovariate(rate)
        arrivals.append(t)
    result.update(what=f"SD v1.5 architecture, {size}x{size}, {s.dtype_name}, full mode, {STEPS} steps, CFG; "
                       f"{s.serve_requests} Poisson arrivals at {s.serve_load}x the serialized capacity; threads "
                       "calling generate(); uncompiled CUDA graphs (buckets 1, 2, 4, 8)",
                  service_s=service_s, offered_rate_per_s=rate)
    for policy in ("off", "step"):
        engine = base.with_config(batching=policy, max_queue=4 * s.serve_requests)
        engine_call(engine, size, Prompts())()  # its lane's programs captured
        result[policy] = poisson_run(engine, arrivals, size)
        if engine.batcher is not None:
            engine.batcher.close()
        ctx.save()


def poisson_run(engine, arrivals: list[float], size: int) -> dict:
    """One thread a request, each starting at its arrival time: answered count, errors, throughput
    and latency quantiles."""
    latencies, errors = [], []
    start = time.perf_counter()

    def client(at):
        time.sleep(max(0.0, start + at - time.perf_counter()))
        t1 = time.perf_counter()
        try:
            engine.generate(f"a photo at {at:.4f}", steps=STEPS, guidance_scale=GUIDANCE, height=size, width=size,
                            seed=0, output="latent")
            latencies.append(time.perf_counter() - t1)
        except Exception as e:  # noqa: BLE001  (counted, never lost)
            errors.append(f"{type(e).__name__}: {e}"[:200])

    threads = [threading.Thread(target=client, args=(at,)) for at in arrivals]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - start
    latencies.sort()

    def q(f):
        return latencies[min(len(latencies) - 1, int(f * len(latencies)))] if latencies else None

    return {"answered": len(latencies), "errors": errors, "wall_s": wall, "throughput_per_s": len(latencies) / wall,
            "p50_s": q(0.5), "p99_s": q(0.99)}


def options(ctx, result: dict):
    """Each inductor option set (and a channels-last UNet) on the full mode at batch 1, timed
    interleaved with the default; compile seconds from its first call."""
    from clockwork_engine.compile import CUDA_OPTIONS

    s = ctx.settings
    pipe, _, engines = sd15_objects(ctx)
    size = s.sd15_size
    default = engines["engine_full"]
    prompts = Prompts()
    fns = {"default": engine_call(default, size, prompts)}
    for name in CUDA_OPTIONS:
        if name != "default" and name not in s.skip_options:
            fns[name] = engine_call(default.with_config(inductor=name), size, prompts)
    result["skipped"] = {name: "compiling with autotuning takes minutes" for name in s.skip_options}
    timings = measure(fns, s.warmup, ctx.budget(s.options_timing_s), s.min_repeats, s.repeats)
    result.update(timings=timings, first_call_s=first_calls(timings), speedup_vs_default=speedups(timings, "default"))
    ctx.save()
    if ctx.deadline.left() < 60:
        result["channels_last"] = {"skipped": f"{ctx.deadline.left():.0f} s left"}
        return
    import copy

    # A channels-last copy of the UNet: the captured graphs of the other engines keep reading
    # the original weights' memory.
    unet = type(pipe.unet).from_config(pipe.unet.config).to(pipe.device, pipe.unet.dtype).eval()
    unet.load_state_dict(pipe.unet.state_dict())
    unet.to(memory_format=torch.channels_last)
    # Uncompiled too: cuDNN converted every NCHW convolution input to NHWC and back (17 ms of a
    # clockwork request's 85 ms of kernels in the H200 profile).
    cl = Engine(unet, pipe.vae, pipe.tokenizer, pipe.text_encoder, copy.deepcopy(pipe.scheduler), config=default.config)
    fns = {"default": fns["default"], "channels_last": engine_call(cl, size, prompts),
           "uncompiled": engine_call(engines["engine_full_uncompiled"], size, prompts),
           "uncompiled_channels_last": engine_call(cl.with_config(compile=False), size, prompts)}
    timings = measure(fns, s.warmup, ctx.budget(s.options_timing_s), s.min_repeats, s.repeats)
    result["channels_last"] = {"timings": timings, "first_call_s": first_calls(timings),
                               "speedup_vs_default": speedups(timings, "default")}
    del cl, unet
