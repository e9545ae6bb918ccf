"""Compare engine variants on the same held-out captions and noise: prompt alignment,
domain FID, PSNR/SSIM to a reference variant, and latency measured in one run."""

from __future__ import annotations

import statistics
import time

from clockwork_engine.eval import classifier as C
from clockwork_engine.eval import evaluate
from clockwork_engine.eval.metrics import frechet_distance, psnr, ssim


def interleaved(fns: dict, repeats: int, warmup: int = 1) -> dict[str, dict]:
    """Time each fn `repeats` times, alternating between them so drift hits all alike; round k
    starts at the k-th fn (the order rotates), so no fn always runs first, after the others
    have left the caches as they leave them."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for k in range(repeats):
        for name in names[k % len(names):] + names[: k % len(names)]:
            fn = fns[name]
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: summary(ts) for name, ts in times.items()}


def summary(ts: list[float]) -> dict:
    """Quartiles of the times, and the times themselves in call order (for paired_speedup)."""
    q = statistics.quantiles(ts, n=4) if len(ts) >= 2 else [ts[0]] * 3
    return {"median_s": statistics.median(ts), "p25_s": q[0], "p75_s": q[2], "min_s": min(ts), "max_s": max(ts),
            "repeats": len(ts), "times_s": [round(t, 6) for t in ts]}


def paired_speedup(timings: dict, baseline: str, variant: str) -> float:
    """Median over rounds of baseline / variant, each pair timed back to back in one round of
    interleaved(): slow phases of the machine hit both sides of a pair alike."""
    a, b = timings[baseline]["times_s"], timings[variant]["times_s"]
    return statistics.median(x / y for x, y in zip(a, b, strict=True))


def fresh_prompts(n: int, skip: int = 0) -> list[str]:
    """n training-split captions (after the first `skip`): never among the held-out captions an
    evaluation generated (and so encoded and cached) before timing."""
    from clockwork_engine.datasets import shapes

    captions = [s.caption for s in shapes.split_scenes("train")]
    if len(captions) < skip + n:
        raise ValueError(f"latency needs {skip + n} distinct captions, the training split has {len(captions)}")
    return captions[skip : skip + n]


def fresh_prompt_calls(variants: dict, calls: int) -> dict:
    """name -> fn: one generate() per call, each with a caption no call has used before
    (variants may share an engine and its prompt cache), so text encoding is timed as a
    service pays it for a new prompt; only the unconditional "" embedding stays cached."""
    prompts = fresh_prompts(len(variants) * calls)

    def call(i, engine, kw):
        queue = iter(prompts[i * calls : (i + 1) * calls])
        return lambda: engine.generate(next(queue), seed=0, **kw)

    return {name: call(i, engine, kw) for i, (name, (engine, kw)) in enumerate(variants.items())}


def latency(variants: dict, repeats: int = 5, warmup: int = 1) -> dict[str, dict]:
    """summary() of one generate() per variant, a new prompt per call (fresh_prompt_calls);
    the warm-up builds the step programs."""
    return interleaved(fresh_prompt_calls(variants, repeats + warmup), repeats, warmup)


def gflops_of(generate_one, prompt: str, warmup_prompt: str) -> float:
    """GFLOPs (torch.utils.flop_counter) of generate_one(prompt), one image, after an uncounted
    call with another prompt (which builds what the first call of a request's key builds)."""
    from torch.utils.flop_counter import FlopCounterMode

    generate_one(warmup_prompt)
    with FlopCounterMode(display=False) as counter:
        generate_one(prompt)
    return counter.get_total_flops() / 1e9


def gflops_per_image(engine, kw: dict, prompt: str) -> float:
    """FLOPs of one generate() with a prompt not in the prompt cache: text encoding, every model
    evaluation and the decoder, as a request for a new prompt pays. A first call of another
    prompt builds the step programs of the request's key (building runs a step once more)
    outside the count."""
    return gflops_of(lambda p: engine.generate(p, seed=0, **kw), prompt, prompt + " (warm-up)")


def compare(variants: dict, singles: int, pairs: int, guidance: float, latency_repeats: int = 5,
            reference: str | None = None) -> dict:
    """variants: name -> (engine, generate kwargs incl. steps and mode). The reference for
    PSNR/SSIM and the latency ratio is `reference` (default: the first variant)."""
    reference = reference or next(iter(variants))
    model = C.load()
    scenes = evaluate.eval_scenes(singles, pairs)
    _, _, real_feats = evaluate.score_images(model, scenes, evaluate.real_images(scenes))
    images, results = {}, {}
    for name, (engine, kw) in variants.items():
        images[name] = evaluate.generate_all(engine, scenes, guidance=guidance, **kw)
    lat = latency({k: (e, {**kw, "guidance_scale": guidance}) for k, (e, kw) in variants.items()},
                  latency_repeats) if latency_repeats else {}
    for name, (engine, kw) in variants.items():
        singles_acc, pairs_acc, feats = evaluate.score_images(model, scenes, images[name])
        ref = images[reference]
        results[name] = {
            "generate_kwargs": {k: v for k, v in kw.items() if isinstance(v, (int, float, str))},
            "schedule": engine.step_kinds(kw.get("steps", engine.config.steps), kw.get("mode", engine.config.mode)),
            "single_colour_and_shape": singles_acc["colour_and_shape"]["accuracy"],
            "single_all": singles_acc["all"]["accuracy"],
            "pair_all": pairs_acc["all"]["accuracy"] if pairs_acc else None,
            "singles": singles_acc, "pairs": pairs_acc, "domain_fid": frechet_distance(feats, real_feats),
            "psnr_to_reference": float(psnr(images[name], ref).mean()),
            "ssim_to_reference": float(ssim(images[name], ref).mean()),
        }
        if lat:
            t = lat[name]
            results[name].update(latency_s=t["median_s"], latency_p25_s=t["p25_s"], latency_p75_s=t["p75_s"],
                                 latency_repeats=t["repeats"], latency_ratio=lat[reference]["median_s"] / t["median_s"],
                                 latency_times_s=t["times_s"],  # call order: round k of every variant back to back
                                 latency_prompts="fresh")  # a new prompt per call: text encoding timed
        # a prompt of its own per variant (engines may share a prompt cache); any prompt costs the same
        results[name]["gflops_per_image"] = gflops_per_image(engine, {**kw, "guidance_scale": guidance},
                                                             f"a new prompt to count the flops of {name}")
    for name in variants:
        results[name]["flop_ratio"] = results[reference]["gflops_per_image"] / results[name]["gflops_per_image"]
        print(name, {k: v for k, v in results[name].items() if k not in ("singles", "pairs", "schedule")})
    return {"reference": reference, "images": len(scenes), "unique_captions": len({s.caption for s in scenes}),
            "guidance": guidance, "variants": results}
