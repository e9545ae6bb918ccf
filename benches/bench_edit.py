"""Editing on the demo (the shapes world): image-to-image colour changes and inpainting a shape.

    python benches/bench_edit.py [--images 64] [--strengths 0.5,0.7,0.9] [--repeats 5]

Tasks, on held-out single-shape captions, each input a real render of its caption:
  recolour  img2img with the caption's colour swapped ("a red circle ..." -> "a blue circle ...")
            at each strength. Edit accuracy: the classifier reads the asked colour and shape.
            Preservation: PSNR to the input outside the shape's box (grown by 4 px), where
            nothing should change.
  inpaint   a new shape in an empty grid cell ("a green triangle in the bottom right"), that
            cell masked, strength 1. Edit accuracy: the asked colour covers a blob of the asked
            shape inside the mask. Preservation: PSNR to the input outside the mask.
Variants: stock diffusers (its Img2Img / Inpaint pipeline on the demo's components, the
reference for speed), the engine in full mode, clockwork (the shipped adaptor, fitted on full
trajectories, here on partial ones), DeepCache (interval 2; if installed) and the students
guided-8 and progressive-4 at their own step counts. Same inputs, prompts and seeds for all.
Latency: one batch-1 edit per call with a caption no call has used before (so every variant
pays its text encoding, as a service does for a new prompt), interleaved repeats after a
warm-up, medians.
"""

from __future__ import annotations

import argparse
import copy
import sys

import numpy as np
import torch
from common import interleaved, machine, write

from clockwork_engine import Engine
from clockwork_engine.datasets import shapes
from clockwork_engine.eval import alignment
from clockwork_engine.eval import classifier as C
from clockwork_engine.eval.compare import fresh_prompts
from clockwork_engine.eval.metrics import psnr

CELL = shapes.IMAGE_SIZE // 3
NAMES = {v: k for k, v in shapes.POSITIONS.items()}  # (row, col) -> "in the top left", ...


def cell_box(row: int, col: int) -> tuple[slice, slice]:
    """The grid cell's pixels, on a 4-px grid (one latent pixel of the demo VAE)."""
    lo = lambda k: 4 * round(k * CELL / 4)  # noqa: E731
    return slice(lo(row), lo(row + 1) if row < 2 else shapes.IMAGE_SIZE), \
        slice(lo(col), lo(col + 1) if col < 2 else shapes.IMAGE_SIZE)


def tasks(n: int, seed: int = 0):
    """(recolour, inpaint): lists of dicts with input image [3, 64, 64] in [0, 1], prompt, target
    scene, and the pixels that must not change (keep [64, 64] bool)."""
    rng = np.random.default_rng(seed)
    singles = [s for s in shapes.split_scenes("eval") if not s.is_pair and s.position]
    recolour, inpaint = [], []
    while len(recolour) < n:
        scene = singles[rng.integers(0, len(singles))]
        shape = shapes.layout(scene, rng)[0]
        image = torch.from_numpy(shapes.render([shape])).permute(2, 0, 1).float() / 255
        colour = rng.choice([c for c in shapes.COLOURS if c != scene.colour])
        target = shapes.Scene(str(colour), scene.shape, scene.size, scene.position)
        box = np.zeros((shapes.IMAGE_SIZE,) * 2, bool)
        h = shape.half + 4
        box[max(0, int(shape.cy - h)):int(shape.cy + h) + 1, max(0, int(shape.cx - h)):int(shape.cx + h) + 1] = True
        free = [(r, c) for r in range(3) for c in range(3) if not box[cell_box(r, c)].any()]  # cells it leaves empty
        if not free:
            continue
        recolour.append({"image": image, "prompt": target.caption, "scene": target, "keep": torch.from_numpy(~box)})
        r, c = free[rng.integers(0, len(free))]
        new = shapes.Scene(str(rng.choice(list(shapes.COLOURS))), str(rng.choice(shapes.SHAPES)), "", NAMES[(r, c)])
        mask = torch.zeros(1, shapes.IMAGE_SIZE, shapes.IMAGE_SIZE)
        mask[0][cell_box(r, c)] = 1.0
        inpaint.append({"image": image, "mask": mask, "prompt": new.caption, "scene": new, "keep": mask[0] == 0})
    return recolour, inpaint


def recolour_ok(model, items, out: torch.Tensor) -> list[bool]:
    _, presence, geometry = alignment.read(model, out)
    return [alignment.score(t["scene"], p, g, im)["colour_and_shape"]
            for t, p, g, im in zip(items, presence, geometry, out, strict=True)]


def inpaint_ok(items, out: torch.Tensor) -> list[bool]:
    ok = []
    for t, im in zip(items, out, strict=True):
        inside = alignment.colour_mask(im, t["scene"].colour) & (t["mask"][0] > 0)
        ok.append(alignment.shape_of(inside) == t["scene"].shape)
    return ok


def preservation(items, out: torch.Tensor) -> float:
    """Mean PSNR to the input over the pixels that should stay (outside the box or mask)."""
    vals = []
    for t, im in zip(items, out, strict=True):
        keep = t["keep"]
        mse = float((im - t["image"]).pow(2).mean(0)[keep].mean())
        vals.append(10 * np.log10(1.0 / max(mse, 1e-10)))
    return float(np.mean(vals))


class Diffusers:
    """Stock diffusers: the Img2Img and Inpaint pipelines on the demo's components."""

    def __init__(self, engine, deepcache: int = 0):
        import diffusers

        from clockwork_engine.demo.pipeline import assemble

        base = assemble(engine.unet, engine.vae, engine.scheduler, engine.prompts.tokenizer, engine.text_encoder)
        # each pipeline steps a scheduler of its own (the engine's is only ever copied)
        self.pipes = {"img2img": diffusers.StableDiffusionImg2ImgPipeline(
                          **{**base.components, "scheduler": copy.deepcopy(engine.scheduler)}),
                      "inpaint": diffusers.StableDiffusionInpaintPipeline(
                          **{**base.components, "scheduler": copy.deepcopy(engine.scheduler)})}
        self.helpers = {}
        for kind, pipe in self.pipes.items():
            pipe.set_progress_bar_config(disable=True)
            if deepcache:
                from DeepCache import DeepCacheSDHelper

                self.helpers[kind] = DeepCacheSDHelper(pipe=pipe)
                self.helpers[kind].set_params(cache_interval=deepcache, cache_branch_id=0)

    @torch.no_grad()
    def edit(self, prompts, images, masks, strength, seeds, steps, guidance):
        kind = "img2img" if masks is None else "inpaint"
        kw = dict(mask_image=masks, height=shapes.IMAGE_SIZE, width=shapes.IMAGE_SIZE) if masks is not None else {}
        helper = self.helpers.get(kind)
        if helper is not None:
            helper.enable()
        try:
            return self.pipes[kind](prompts, image=images, strength=strength, num_inference_steps=steps,
                                    guidance_scale=guidance, output_type="pt",
                                    generator=[torch.Generator().manual_seed(s) for s in seeds], **kw).images
        finally:
            if helper is not None:
                helper.disable()


class EngineEdit:
    def __init__(self, engine, mode: str):
        self.engine, self.mode = engine, mode

    def edit(self, prompts, images, masks, strength, seeds, steps, guidance):
        kw = {} if masks is None else {"mask_image": masks}
        return self.engine.generate(prompts, image=images, strength=strength, steps=steps, guidance_scale=guidance,
                                    seed=seeds, mode=self.mode, output="pt", **kw)


def variants(deepcache: bool):
    teacher = Engine.from_pretrained("demo")
    out = {"diffusers": (Diffusers(teacher), 8), "engine_full": (EngineEdit(teacher, "full"), 8),
           "clockwork": (EngineEdit(teacher, "clockwork"), 8)}
    if deepcache:
        try:
            out["deepcache_i2"] = (Diffusers(teacher, deepcache=2), 8)
        except ImportError:
            print("DeepCache is not installed (pip install -e '.[bench]'): skipped")
    for preset in ("guided-8", "progressive-4"):
        student = Engine.from_pretrained("demo", preset=preset, config="full")
        out[f"{preset}"] = (EngineEdit(student, "full"), student.config.steps)
    return out


def run_task(variant, items, strength, steps, guidance, batch=16):
    outs = []
    for k in range(0, len(items), batch):
        chunk = items[k : k + batch]
        images = torch.stack([t["image"] for t in chunk])
        masks = torch.stack([t["mask"] for t in chunk]) if "mask" in chunk[0] else None
        outs.append(variant.edit([t["prompt"] for t in chunk], images, masks, strength,
                                 list(range(k, k + len(chunk))), steps, guidance).float().cpu())
    return torch.cat(outs)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--strengths", default="0.5,0.7,0.9")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-deepcache", action="store_true")
    ap.add_argument("--out", default="edit_demo.json")
    argv = sys.argv[1:] if argv is None else argv
    args = ap.parse_args(argv)
    model = C.load()
    recolour, inpaint = tasks(args.images)
    vs = variants(not args.no_deepcache)
    guidance = Engine.default_config("demo").guidance_scale
    settings = [(f"recolour@{s}", recolour, float(s)) for s in args.strengths.split(",")] + [("inpaint", inpaint, 1.0)]
    results = {}
    prompts = iter(fresh_prompts(len(vs) * (args.repeats + 2) * len(settings)))  # a new caption every timed call
    for task, items, strength in settings:
        row = {}
        for name, (variant, steps) in vs.items():
            with torch.no_grad():
                out = run_task(variant, items, strength, steps, guidance)
            ok = recolour_ok(model, items, out) if task != "inpaint" else inpaint_ok(items, out)
            row[name] = {"edit_accuracy": float(np.mean(ok)), "preservation_psnr": preservation(items, out),
                         "steps": steps, "strength": strength}
            print(task, name, row[name])
        one = items[0]
        calls = {name: (lambda v=variant, s=steps, one=one, strength=strength: v.edit(
                     [next(prompts)], one["image"][None], one["mask"][None] if "mask" in one else None, strength,
                     [0], s, guidance))
                 for name, (variant, steps) in vs.items()}
        with torch.no_grad():
            t = interleaved(calls, args.repeats, warmup=2)
        for name in vs:
            row[name]["latency_s"] = t[name]["median_s"]
            row[name]["speedup"] = t["diffusers"]["median_s"] / t[name]["median_s"]
        ref_psnr = {name: float(psnr(run_task(vs[name][0], items[:16], strength, vs[name][1], guidance),
                                     run_task(vs["diffusers"][0], items[:16], strength, 8, guidance)).mean())
                    for name in ("engine_full",)}
        row["engine_full"]["psnr_to_diffusers"] = ref_psnr["engine_full"]
        results[task] = row
    write(args.out, {"command": " ".join(["python benches/bench_edit.py", *argv]), "images": args.images,
                     "guidance": guidance, "latency_repeats": args.repeats, "tasks": results, "machine": machine()})


if __name__ == "__main__":
    main()
