"""Clockwork on the SD3-layout (or Flux-layout) demo against diffusers' own caches: one run per step count.

    python benches/bench_sd3_peers.py [--singles 100 --pairs 50 --steps 8 20 28 --repeats 10 --clocks FILE ...]
    python benches/bench_sd3_peers.py --model demo-flux --steps 4 8 28

With --model demo-flux the same on demo-flux (FluxPipeline, guidance-distilled: the guidance
scale is an input, one model call a step), FirstBlockCache among the peers, written to
flux_peers_<steps>.json; the learned rows where the demo ships an adaptor.

Per step count, on demo-sd3 (StableDiffusion3Pipeline: flow-match Euler, CFG at its
recommended scale): stock diffusers (the reference for PSNR/SSIM and the time ratio); diffusers'
caches on a copy of its transformer (eval/diffusers_caches.py: MagCache calibrated for the step
count, TaylorSeerCache, PyramidAttentionBroadcast, FasterCache), several settings each; the
engine in full mode; clockwork with the identity adaptor (the stale middle output, what a
first-block / DBCache-style cache reuses) and with the learned token-wise adaptor the demo
ships (clockwork_adaptor/, or the one fitted for the step count, at the cut it was fitted at),
on clocks 2 and 3 and on two steps of every three (`dense<k>`: k adaptor steps); the identity
adaptor at cut 2 (the first and last two joint blocks always run) and at cut 0 (no block runs on
an adaptor step: a skipped step, as MagCache's, on clocks 2 and 3); --clocks adds one variant
per searched clock (`clock_<file>`, clockwork search-clock --model demo-sd3) and --learned-on one
with the learned adaptor on the file's clock (`learned_on_<file>`). FirstBlockCache
does not run on SD3 (its error is recorded). Writes benches/results/sd3_peers_<steps>.json.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_e2e import clock_record, clock_variants  # noqa: E402
from common import machine, write  # noqa: E402

SIZE = 64


def stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def cache_settings(steps: int, first_block: bool = False) -> dict[str, tuple[str, dict]]:
    """name -> (diffusers cache kind, its settings): each cache's default and a setting on either
    side of it, scaled to the step count where the setting counts steps; first_block: where
    FirstBlockCache runs (Flux; not SD3)."""
    warm = max(1, steps // 8)  # TaylorSeer's full steps before it extrapolates (its default: 3 of 50)
    return {
        **({f"first_block_t{t}": ("first_block", dict(threshold=t)) for t in (0.05, 0.1, 0.2)} if first_block else {}),
        **{f"mag_t{t}": ("mag", dict(threshold=t)) for t in (0.03, 0.06, 0.12)},
        **{f"taylorseer_i{i}": ("taylorseer", dict(cache_interval=i, disable_cache_before_step=warm))
           for i in (2, 3, 5) if i < steps},
        **{f"pab_r{r}": ("pab", dict(spatial_attention_block_skip_range=r)) for r in (2, 3)},
        **{f"faster_r{r}": ("faster", dict(spatial_attention_block_skip_range=r)) for r in (2, 3)},
    }


def first_block_error(pipe, steps: int, call: dict) -> str:
    """FirstBlockCache on the SD3 transformer: the error its first call raises."""
    import torch

    from clockwork_engine.eval.diffusers_caches import CachedTransformer

    cache = CachedTransformer(pipe.transformer, "first_block", steps, threshold=0.05)
    try:
        pipe("a red circle", num_inference_steps=steps, generator=torch.Generator().manual_seed(0), **call)
    except Exception as e:  # noqa: BLE001 - recorded, not raised: it is the finding
        return f"{type(e).__name__}: {e}"
    finally:
        cache.remove()
    return "ran"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--singles", type=int, default=100)
    ap.add_argument("--pairs", type=int, default=50)
    ap.add_argument("--steps", type=int, nargs="*", default=[8, 20, 28])
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--clocks", nargs="*", default=[],
                    help="clock schedule files (clockwork search-clock --model demo-sd3): a variant each, at its step count")
    ap.add_argument("--learned-on", nargs="*", default=[],
                    help="clock schedule files the learned adaptor also runs on (`learned_on_<file>`): the two "
                         "adaptors on one clock, the identity's searched ones")
    ap.add_argument("--model", default="demo-sd3", choices=("demo-sd3", "demo-flux"),
                    help="demo-flux: the Flux-layout demo (guidance-distilled: no CFG batch; FirstBlockCache runs)")
    args = ap.parse_args()
    missing = [p for p in args.clocks + args.learned_on if not os.path.isfile(p)]
    if missing:
        raise SystemExit(f"no such clock schedule file: {', '.join(missing)}")

    import torch

    from clockwork_engine import Engine
    from clockwork_engine.clockwork import adaptors as adaptor_io
    from clockwork_engine.clockwork.adaptors import model_fingerprint
    from clockwork_engine.demo import flux, sd3
    from clockwork_engine.engine import ADAPTOR_FOLDER
    from clockwork_engine.eval.baselines import DiffusersBaseline, DiffusersCacheBaseline
    from clockwork_engine.eval.compare import compare
    from clockwork_engine.eval.diffusers_caches import calibrate_mag

    is_flux = args.model == "demo-flux"
    demo_dir, prefix = (flux.DEMO_FLUX_DIR, "flux") if is_flux else (sd3.DEMO_SD3_DIR, "sd3")
    pipe = flux.load() if is_flux else sd3.load()
    pipe.set_progress_bar_config(disable=True)
    config = Engine.default_config(args.model)
    # every variant's keys (batch 16 for images, 1 for latency) kept: none is rebuilt while timed
    base = Engine.from_pipeline(pipe, config=config.with_(mode="full", max_graphs=32))
    guidance, tokens = config.guidance_scale, config.max_sequence_length
    call = dict(max_sequence_length=tokens)  # the pipeline's arguments the engine takes from clockwork_engine.json
    if is_flux:  # FluxTransformer2DModel keeps no sample_size: the size is the call's
        call.update(height=SIZE, width=SIZE)
    learned = os.path.join(demo_dir, ADAPTOR_FOLDER)
    learned_on = [clock_record(p) for p in args.learned_on]
    for n in args.steps:
        image_call = dict(guidance_scale=guidance, output_type="latent", **{"height": SIZE, "width": SIZE, **call})
        ratios = calibrate_mag(pipe, n, prompt="a red circle", generator=torch.Generator().manual_seed(0),
                               **image_call)
        peers = {name: (DiffusersCacheBaseline(pipe, name, kind, n, ratios if kind == "mag" else None, call,
                                               **settings), dict(steps=n))
                 for name, (kind, settings) in cache_settings(n, is_flux).items()}
        kw = dict(steps=n, mode="clockwork")
        # every 2nd / 3rd step on the adaptor, and two of every three ("dense": full at 0, 3, 6, ...)
        dense = tuple(i for i in range(n) if i % 3)
        periodic = {"c2": dict(clock_every=2), "c3": dict(clock_every=3)}
        clocks = {**periodic, f"dense{len(dense)}": dict(adaptor_steps=dense)}
        fitted = adaptor_io.for_steps(learned, n) if os.path.isdir(learned) else None  # None: no learned rows
        ours = {
            "engine_full": (base, dict(steps=n, mode="full")),
            **{f"identity_{name}": (base.with_config(mode="clockwork", adaptor="identity", **clock), kw)
               for name, clock in clocks.items()},
            "identity_c2_cut2": (base.with_config(mode="clockwork", adaptor="identity", cut=2), kw),
            # cut 0: an adaptor step runs no block at all (MagCache's skipped step, on a fixed clock)
            **{f"identity_{name}_cut0": (base.with_config(mode="clockwork", adaptor="identity", cut=0, **clock), kw)
               for name, clock in periodic.items()},
            **{f"clockwork_{name}": (base.with_config(mode="clockwork", adaptor=fitted, **clock), kw)
               for name, clock in clocks.items() if fitted},
            **clock_variants(base, args.clocks, n, learned),
            **{f"learned_on_{stem(r['file'])}":
               (base.with_config(mode="clockwork", adaptor=fitted, adaptor_steps=tuple(r["adaptor_steps"])), kw)
               for r in learned_on if fitted and r["steps"] == n},
        }
        variants = {"diffusers": (DiffusersBaseline(pipe, **call), dict(steps=n)), **peers, **ours}
        result = compare(variants, args.singles, args.pairs, guidance=guidance, latency_repeats=args.repeats,
                         reference="diffusers")
        result["not_run"] = {} if is_flux else {"first_block_t0.05": first_block_error(pipe, n, image_call)}
        result["adaptor"] = fitted and os.path.relpath(fitted, os.path.dirname(demo_dir))
        result["adaptor_cut"] = fitted and adaptor_io.read_meta(fitted)["cut"]
        result["clocks"] = {f"clock_{stem(p)}": clock_record(p)
                            for p in args.clocks if clock_record(p)["steps"] == n}
        result["learned_on"] = {f"learned_on_{stem(r['file'])}": r["file"] for r in learned_on if r["steps"] == n}
        result["mag_ratios"] = ratios
        result["peer_settings"] = {k: {"kind": kind, **s} for k, (kind, s) in cache_settings(n, is_flux).items()}
        env = "".join(f"{k}={os.environ[k]} " for k in ("OMP_NUM_THREADS",) if k in os.environ)
        write(f"{prefix}_peers_{n}.json", {"command": env + "python " + " ".join(sys.argv), "steps": n,
                                           "model": args.model, f"demo_{prefix}": model_fingerprint(pipe.transformer),
                                           "size": SIZE, **result, "machine": machine()})


if __name__ == "__main__":
    main()
