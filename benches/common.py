"""Shared by the benchmark scripts: interleaved timing (from eval.compare), the fused-ops-off
variant, machine info, JSON out."""

from __future__ import annotations

import json
import os
import platform

import torch

from clockwork_engine.eval.compare import interleaved  # noqa: F401  (re-exported for the benches)

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
# Clockwork adaptors fitted for students that do not ship one (they lose too much alignment to
# ship; kept so that the distill bench can show what clockwork costs on them): <preset>/.
UNSHIPPED_ADAPTORS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "adaptors")


class FusedOpsOff:
    """An engine whose generate() runs with the fused ops off (the eager torch reference):
    CLOCKWORK_DISABLE_EXT is read per call."""

    def __init__(self, engine):
        self.engine = engine

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def generate(self, *args, **kwargs):
        os.environ["CLOCKWORK_DISABLE_EXT"] = "1"
        try:
            return self.engine.generate(*args, **kwargs)
        finally:
            os.environ.pop("CLOCKWORK_DISABLE_EXT", None)


def teacher_and_students(reuse: bool = False, unshipped_adaptors: bool = False) -> dict:
    """name -> (engine, generate kwargs): the demo teacher (full, clockwork) and every shipped
    student at its own step count (full, and clockwork where it ships its own adaptor); reuse:
    also attention reuse in the last step, for students with more than 2 steps. Students with at
    most 4 steps also run with the demo's tiny decoder (+tiny_decoder), where the VAE decoder is
    a large share of their cost, and also with it and a bfloat16 text encoder (+bf16_text), whose
    batch-1 cost is reading its weights. unshipped_adaptors: also clockwork with the adaptor in
    benches/adaptors/<preset>/ for students that ship none (+clockwork_unshipped)."""
    from clockwork_engine import Engine
    from clockwork_engine.engine import student_presets

    teacher = Engine.from_pretrained("demo")
    variants = {"teacher_8_cfg": (teacher, dict(steps=8, mode="full")),
                "teacher_8_clockwork": (teacher, dict(steps=8, mode="clockwork"))}
    for name in student_presets("demo"):
        student = Engine.from_pretrained("demo", preset=name)  # clockwork if it ships an adaptor
        n = student.config.steps
        for mode in ("full", "clockwork") if student.adaptor is not None else ("full",):
            tag = f"{name}_{n}_steps" + ("+clockwork" if mode == "clockwork" else "")
            variants[tag] = (student, dict(steps=n, mode=mode))
            if mode == "full" and n <= 4 and student.decoder_dir is not None:
                variants[tag + "+tiny_decoder"] = (student.with_config(decoder="tiny"), dict(steps=n, mode=mode))
                variants[tag + "+tiny_decoder+bf16_text"] = (student.with_config(decoder="tiny", text_dtype="bfloat16"),
                                                             dict(steps=n, mode=mode))
            if reuse and n > 2:
                variants[tag + "+reuse"] = (student.with_config(attention_reuse=(n - 1,)), dict(steps=n, mode=mode))
        extra = os.path.join(UNSHIPPED_ADAPTORS, name)
        if unshipped_adaptors and student.adaptor is None and os.path.isdir(extra):
            variants[f"{name}_{n}_steps+clockwork_unshipped"] = (
                student.with_config(mode="clockwork", adaptor=extra), dict(steps=n, mode="clockwork"))
    return variants


def machine() -> dict:
    return {"cpu_threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version(),
            "machine": platform.machine()}


def write(name: str, result: dict) -> str:
    """benches/results/<name>, with the fingerprint of the committed demo UNet it was measured on
    (docs/make_results.py marks results of an earlier demo UNet)."""
    from clockwork_engine.demo.pipeline import fingerprint

    result = {**result, "demo_unet": fingerprint()}
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, name)
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result, indent=1))
    print(f"wrote {path}")
    return path


def time_engines(engines: dict, kw: dict, repeats: int) -> dict:
    """Interleaved end-to-end timings of engines: name -> (engine, mode), a new prompt each call.
    Each engine is first warmed up by a request cancelled after its first step (the step
    programs' build is what warms up)."""
    from clockwork_engine.eval.compare import fresh_prompts

    class Warm(Exception):
        pass

    def cancel(i, n, x):
        raise Warm

    prompts = iter(fresh_prompts((repeats + 1) * len(engines)))
    for engine, mode in engines.values():
        try:
            engine.generate(next(prompts), mode=mode, callback=cancel, **kw)
        except Warm:
            pass
    fns = {name: (lambda e=engine, m=mode: e.generate(next(prompts), mode=m, **kw))
           for name, (engine, mode) in engines.items()}
    return interleaved(fns, repeats, warmup=0)
