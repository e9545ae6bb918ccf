"""Render docs/results.md (a one-page summary) and docs/results/*.md (one page a topic) from
the JSON files in benches/results/.

    python docs/make_results.py

Every table names the command that produced its JSON; a section whose JSON is missing
says so instead of showing numbers. Nothing is typed in by hand: every figure on these pages
is read from a JSON file. Prose lines are wrapped and a table cell longer than CELL_MAX
becomes a numbered note under its table, so no generated line is longer than MAX_LINE.
"""

from __future__ import annotations

import json
import math
import os
import re
import statistics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benches", "results")


def load(name):
    path = os.path.join(RESULTS, name)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


CELL_MAX = 100  # a longer table cell (a command, a long list of steps) becomes a note under the table
MAX_LINE = 300  # no generated line is longer (tests/test_docs.py)
WRAP = 180  # prose lines are wrapped at this width


def table(header, rows):
    """A Markdown table; cells longer than CELL_MAX are replaced by "(n)" and listed under it
    (a cell repeated in several rows, such as one search command, is listed once)."""
    notes: dict[str, int] = {}

    def cell(c):
        text = str(c)
        if len(text) <= CELL_MAX:
            return text
        return f"({notes.setdefault(text, len(notes) + 1)})"

    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    if notes:
        out.append("")
        out += [f"- ({n}) {text}" for text, n in notes.items()]
    return "\n".join(out)


_RISKY_START = re.compile(r"^([-+*>#|=]|\d+[.)]|```)")  # would start a list, heading, quote or table


def wrap(text: str, width: int = WRAP) -> str:
    """Wrap prose lines (not tables, headings or code blocks) at spaces. A line break inside
    an inline code span renders as a space. A list item's continuation lines are indented."""
    out, fenced = [], False
    for line in text.split("\n"):
        if line.startswith("```"):
            fenced = not fenced
        if fenced or line.startswith(("```", "|", "#")) or len(line) <= width:
            out.append(line)
            continue
        hard_break = line.endswith("  ")
        indent = "  " if line.startswith("- ") else ""
        words = line.rstrip().split(" ")
        current = words[0]
        for word in words[1:]:
            if len(current) + 1 + len(word) > width and current.strip() and not _RISKY_START.match(word):
                out.append(current)
                current = indent + word
            else:
                current += " " + word
        out.append(current + ("  " if hard_break else ""))
    return "\n".join(out)


def pct(x):
    return "-" if x is None else f"{100 * x:.1f}%"


def _current_demo_unet() -> str:
    import sys

    sys.path.insert(0, ROOT)
    from clockwork_engine.demo.pipeline import fingerprint

    return fingerprint()


CURRENT_DEMO_UNET = _current_demo_unet()


def earlier_unet(name) -> bool:
    """True if benches/results/<name> was measured on an earlier demo UNet than the committed one
    (benches record the demo UNet's fingerprint; results without one are of the earlier UNet)."""
    d = load(name) if name else None
    return bool(d) and d.get("demo_unet", d.get("unet_fingerprint")) != CURRENT_DEMO_UNET


def missing(name):
    return f"_Not measured yet: benches/results/{name} is missing._\n"


def render(name, title, body) -> str:
    """A '## title' section: body(json) of benches/results/<name>, or a line saying it is missing."""
    d = load(name)
    return f"## {title}\n\n" + (body(d) if d else missing(name))


def section_alignment():
    return render("alignment_demo.json", "Demo model quality (prompt alignment, held-out captions)", _alignment)


def _alignment(d):
    out = []
    out.append(f"Command: `{d['command']}`  \n{d['images']} images over {d['unique_captions']} unique held-out "
               f"captions (never seen in training), {d['steps']} DPM++ steps, CFG {d['guidance']}. "
               "Colour, position and size are read by the classifier, shape from the pixel mask of the asked "
               "colour (eval/alignment.py); the same reader on real renders of the same captions is the ceiling.\n")
    rows = []
    for group in ("singles", "pairs"):
        gen, real = d["generated"][group], d["classifier_on_real_renders"][group]
        for attr, v in gen.items():
            rows.append([group, attr, pct(v["accuracy"]), pct(real[attr]["accuracy"]), v["n"]])
    out.append(table(["captions", "attribute", "generated", "real renders", "n"], rows))
    out.append(f"\nDomain FID (classifier features, generated vs renders): {d['domain_fid']:.3f}\n")
    return "\n".join(out)


def section_progressive_rounds():
    return render("progressive2_rounds.json", "Progressive 4 -> 2: a longer round", _rounds)


def section_progressive_data():
    return render("progressive_rounds.json", "Progressive distillation: Meng et al.'s noised data vs the teacher's "
                  "trajectories", _rounds)


def _rounds(d):
    out = [f"{d['what']}; evaluated with `python -m clockwork_engine.eval.evaluate` (held-out captions).\n"]
    rows = [[k, pct(v["single_colour_and_shape"]), pct(v["single_colour"]), pct(v["single_shape"]),
             pct(v["pairs_all"]) if "pairs_all" in v else "-", f"{v['domain_fid']:.3f}", v["images"],
             f"`{v['train_command']}`"] for k, v in d["rounds"].items()]
    out.append(table(["round", "single: colour+shape", "colour", "shape", "pairs all", "domain FID", "images",
                      "trained by"], rows))
    return "\n".join(out) + "\n"


def section_tiny_decoder():
    return render("tiny_decoder.json", "The tiny decoder: what it costs in alignment", _rounds)


def section_schedulers():
    return render("schedulers_demo.json", "Schedulers: parity with diffusers and the sampling loop's latency",
                  _schedulers)


def _schedulers(d):
    keys = ("epsilon/cfg_off", "epsilon/cfg_on", "v_prediction/cfg_off", "v_prediction/cfg_on")
    rows = [[f"`{r['scheduler']}`", r["class"], r["evaluations"], *(f"{r['max_abs_diff'][k]:.1e}" for k in keys),
             f"{r['float32_floor']:.1e}", f"{1e3 * r['latency']['diffusers']['median_s']:.1f}",
             f"{1e3 * r['latency']['engine']['median_s']:.1f}",
             f"{r['speedup_median']:.2f}x / {r['speedup_paired']:.2f}x",
             f"{r['loop_only_ms']['diffusers']:.2f} / {r['loop_only_ms']['engine']:.2f}"] for r in d["rows"]]
    worst = max(v for r in d["rows"] for v in r["max_abs_diff"].values())
    ratios = [r["speedup_paired"] for r in d["rows"]]
    loop = [r["loop_only_ms"]["diffusers"] / r["loop_only_ms"]["engine"] for r in d["rows"]]
    return (f"Command: `{d['command']}`; the demo at {d['steps']} steps (model evaluations: Heun, KDPM2 and PNDM "
            f"evaluate the model more often than once a step). Parity: max |engine - diffusers| of the final latents "
            f"(two prompts, one seeded generator a row), CFG off (scale 1) and on (scale {d['guidance']}); the demo "
            f"UNet is trained for epsilon, so the v_prediction columns check the arithmetic only; worst {worst:.1e}. "
            f"Float32 floor: diffusers against itself with every initial latent one float32 ulp away (epsilon, CFG): "
            f"how far a rounding difference alone travels. Latency: {d['latency_setup']}, medians of {d['repeats']} "
            f"interleaved repeats, speed-up = diffusers / engine (medians / paired per round): "
            f"{min(ratios):.2f}x-{max(ratios):.2f}x, the UNet's time dominating both. Loop alone: the same with the "
            f"UNet replaced by a stand-in that costs nothing ({d['loop_only_repeats']} repeats, ms per image): the "
            f"engine's loop costs {min(loop):.1f}x-{max(loop):.1f}x less than diffusers'.\n\n"
            + table(["name", "diffusers class", "model evals", "eps, no CFG", "eps, CFG", "v, no CFG", "v, CFG",
                     "float32 floor", "diffusers ms", "engine ms", "speed-up", "loop alone: diffusers / engine ms"],
                    rows) + "\n")


def section_edit():
    return render("edit_demo.json", "Editing: image-to-image and inpainting on the demo", _edit)


def _edit(d):
    rows = []
    for task, variants in d["tasks"].items():
        for name, v in variants.items():
            rows.append([task, name, v["steps"], pct(v["edit_accuracy"]), f"{v['preservation_psnr']:.1f}",
                         f"{1e3 * v['latency_s']:.1f}", f"{v['speedup']:.2f}x"])
    parity = "; ".join(f"{task}: {v['engine_full']['psnr_to_diffusers']:.1f} dB" for task, v in d["tasks"].items())
    return (f"Command: `{d['command']}`; {d['images']} inputs a task (real renders of held-out single-shape "
            f"captions), CFG {d['guidance']}. `recolour@s`: image-to-image at strength s with the caption's colour "
            "swapped; edit accuracy = the classifier reads the asked colour and shape; preservation = PSNR to the "
            "input outside the shape's box (grown by 4 px). `inpaint`: a new shape in an empty grid cell, that cell "
            "masked (strength 1); edit accuracy = the asked colour covers a blob of the asked shape inside the mask; "
            "preservation = PSNR to the input outside the mask. `steps` is the step count the variant is asked "
            "for (an edit runs the share its strength leaves); `clockwork` is the shipped adaptor, fitted on full "
            "trajectories from noise, running on the clock over the evaluations an edit runs (the first full). "
            f"With {d['images']} inputs an accuracy's binomial standard error is up to "
            f"{50 / d['images'] ** 0.5:.0f} points. Latency: one batch-1 edit a call, a caption no call has used "
            f"before (text encoding timed), medians of {d['latency_repeats']} interleaved repeats; speed-up against "
            f"stock diffusers' pipeline in the same run. Engine full mode against diffusers (PSNR of the images, 16 "
            f"inputs): {parity}.\n\n"
            + table(["task", "variant", "steps", "edit accuracy", "preservation dB", "latency ms", "speed-up"], rows)
            + "\n")


def section_guidance_sweep():
    return render("alignment_guidance_sweep.json", "Demo model: prompt alignment vs guidance scale and steps", _sweep)


def _sweep(d):
    rows = [[r["setting"], pct(r["single"]["colour_and_shape"]), pct(r["single"]["colour"]), pct(r["single"]["shape"]),
             pct(r["single"]["position"]), pct(r["single"]["size"]), pct(r["pairs_all"]), f"{r['domain_fid']:.2f}"]
            for r in d["runs"]]
    commands = f"Command: `{d['command']}`" if "command" in d else "Commands: " + "; ".join(
        f"`{r['command']}`" for r in d["runs"])
    out = [f"{d['what']}. {commands}\n",
           table(["setting", "colour+shape", "colour", "shape", "position", "size", "pairs: all", "domain FID"], rows)]
    return "\n".join(out) + "\n"


def section_flops():
    out = ["## Clockwork FLOPs (torch.utils.flop_counter, meta tensors)\n"]
    for name, label in (("flops_sd15.json", "SD v1.5 UNet architecture, 512x512, CFG batch 2"),
                        ("flops_sdxl.json", "SDXL base UNet architecture, 1024x1024, CFG batch 2, cut at 64x64 "
                                            "(the adaptor as wide as r_out)"),
                        ("flops_demo.json", "demo UNet, 64x64, CFG batch 2"),
                        ("flops_sd15_cut0.json", "SD v1.5 UNet architecture, 512x512, CFG batch 2, cut 0 (DeepCache's "
                                                 "cut: H_in = conv_in, H_out = the UNet's last layer)"),
                        ("flops_sdxl_cut0.json", "SDXL base UNet architecture, 1024x1024, CFG batch 2, cut 0 (the "
                                                 "adaptor as wide as r_out)")):
        d = load(name)
        if not d:
            out.append(missing(name))
            continue
        out.append(f"**{label}**, 8 steps, clock 2 (adaptor on 0-based steps {d['adaptor_steps_0based']}), "
                   f"adaptor {d['adaptor_parameters'] / 1e6:.2f}M parameters. Command: `{d['command']}`\n")
        rows = [[conv, f"{d[conv]['unet_forward_batch1_gflops']:.2f}", f"{d[conv]['always_run_batch1_gflops']:.2f}",
                 f"{d[conv]['adaptor_batch1_gflops']:.3f}", f"{d[conv]['baseline_tflops_per_image']:.4f}",
                 f"{d[conv]['clockwork_tflops_per_image']:.4f}", pct(-d[conv]["saving"])]
                for conv in ("paper", "full")]
        out.append(table(["convention", "UNet GFLOPs (batch 1)", "always-run GFLOPs", "adaptor GFLOPs",
                          "baseline TFLOPs/image", "clockwork TFLOPs/image", "change"], rows) + "\n")
    out.append("`paper` counts what Clockwork's 677.8 GFLOPs counts (no attention-score matmuls); `full` adds "
               "QK^T and P.V (diffusers' plain AttnProcessor: baddbmm + bmm). The paper reports SD v1.5 "
               "10.8 -> 7.3 TFLOPs (-32%); it does not measure SDXL, whose UNet puts most of its compute (10-layer "
               "transformer blocks) at 32x32, inside the part clockwork replaces. FLOPs only: an SDXL adaptor has "
               "not been fitted, so what it costs in quality is unmeasured. At cut 0 an adaptor step runs only "
               "conv_in, the adaptor and the UNet's last layer (with its attention in SD v1.5), the point DeepCache "
               "caches at: the identity adaptor there is DeepCache (tests/test_deepcache_parity.py).\n")
    out.append(section_flops_controlnet())
    out.append(section_flops_sd3())
    return "\n".join(out)


def section_flops_controlnet() -> str:
    """SD v1.5 + its ControlNet under clockwork (tools/flops_controlnet.py)."""
    d = load("flops_sd15_controlnet.json")
    if not d:
        return missing("flops_sd15_controlnet.json")
    rows = [[conv, f"{c['controlnet_full_step_tflops']:.3f}", f"{c['controlnet_adaptor_step_tflops']:.3f}",
             f"{c['baseline_tflops_per_image']:.2f}", f"{c['clockwork_tflops_per_image']:.2f}", pct(-c["saving"])]
            for conv, c in d["controlnet"].items()]
    return ("### SD v1.5 + ControlNet, 512x512, 8 steps, clock 2\n\n"
            f"Command: `{d['command']}`. On an adaptor step the ControlNet runs only its conv_in, "
            "conditioning embedding and first down block (the residuals of the skips H_out consumes); its "
            "other blocks are skipped with the UNet's L.\n\n"
            + table(["convention", "ControlNet TFLOPs, full step", "ControlNet TFLOPs, adaptor step",
                     "UNet + ControlNet TFLOPs/image", "clockwork TFLOPs/image", "change"], rows) + "\n")


SD3_FLOPS = (("flops_sd35_medium.json", "SD3.5 medium"), ("flops_sd35_large.json", "SD3.5 large"),
             ("flops_flux_dev.json", "Flux-dev"), ("flops_flux_schnell.json", "Flux-schnell"))


def section_flops_sd3() -> str:
    """The SD3.5 transformers with the identity adaptor (clockwork_engine.tools.flops.count_transformer)."""
    out = ["### Transformers (SD3.5, Flux), 1024x1024\n"]
    rows, commands = [], []
    for name, label in SD3_FLOPS:
        d = load(name)
        if not d:
            out.append(missing(name))
            continue
        f = d["full"]
        rows.append([label, "identity", d["joint_blocks"], d["always_run_blocks"],
                     f"{f['model_forward_batch1_gflops']:.0f}", f"{f['adaptor_step_fraction']:.3f}",
                     f"{f['baseline_tflops_per_image']:.1f}", f"{f['clockwork_tflops_per_image']:.1f}",
                     pct(-f["saving"]), pct(-d["paper"]["saving"])])
        if "learned_saving" in f:
            a = d["learned_adaptor"]
            rows.append([label, f"learned, {a['parameters'] / 1e6:.1f}M ({a['hidden']} wide)", d["joint_blocks"],
                         d["always_run_blocks"], f"{f['model_forward_batch1_gflops']:.0f}",
                         f"{f['learned_adaptor_step_fraction']:.3f}", f"{f['baseline_tflops_per_image']:.1f}",
                         f"{f['learned_clockwork_tflops_per_image']:.1f}", pct(-f["learned_saving"]),
                         pct(-d["paper"]["learned_saving"])])
        commands.append(d["command"])
    if rows:
        d = next(load(name) for name, _ in SD3_FLOPS if load(name))
        out.append(f"{d['steps']} steps, clock {d['clock_every']}, cut {d['cut']}, {d['image_tokens']} image tokens; "
                   "SD3.5: CFG batch 2 and 333 text tokens (CLIP's 77, T5's 256), Flux: no CFG (dev embeds the "
                   "guidance) and T5's 512 (dev) or 256 (schnell) text tokens. Commands: "
                   + "; ".join(f"`{c}`" for c in commands) + "\n")
        out.append(table(["model", "adaptor", "blocks", "always run", "forward GFLOPs (batch 1)",
                          "adaptor step / full",
                          "full TFLOPs/image", "clockwork TFLOPs/image", "change", "change (no attention scores)"],
                         rows) + "\n")
        out.append("An adaptor step runs the embeddings, the first and last joint block and the output layers; "
                   "the identity adaptor adds the middle blocks' residual from the last full step, the learned "
                   "token-wise adaptor (adaptors.TokenAdaptor, its cost included) predicts it. What either costs "
                   "in quality on SD3 is unmeasured: the weights are random.\n")
    return "\n".join(out)


def section_latency():
    out = ["## Clockwork latency (CPU, 2 cores, interleaved repeats in one run)\n"]
    d = load("latency_demo.json")
    if d:
        t = d["timings"]
        out.append(f"Command: `{d['command']}`; demo pipeline, {d['steps']} DPM++ steps, batch 1 with CFG.\n")
        rows = [[k, f"{v['median_s'] * 1e3:.1f}", f"{v['p25_s'] * 1e3:.1f}-{v['p75_s'] * 1e3:.1f}", v["repeats"]]
                for k, v in t.items()]
        out.append(table(["variant", "median ms", "p25-p75 ms", "repeats"], rows))
        text = ("a new prompt per call: text encoding timed" if d.get("prompts") == "fresh"
                else "one prompt repeated: text encoding cached")
        out.append(f"\nSpeed-up end to end ({text}, VAE decode included): **{d['speedup_end_to_end']:.2f}x**; "
                   f"sampling only (one cached prompt, latents out): **{d['speedup_sampling_only']:.2f}x** "
                   "(ratios of the medians).\n")
        if "paired_speedup" in d:
            pairs = ", ".join(f"{k.replace('_', ' ')} **{v:.2f}x**" for k, v in d["paired_speedup"].items())
            out.append(f"Paired (the median over rounds of full / clockwork, the two calls of a round timed back to "
                       f"back, so slow phases of the shared 2-core CPU hit both): {pairs}.\n")
        if "parts_ms" in d:
            p = d["parts_ms"]
            out.append(f"Where the time goes (median ms, CFG batch 2, same run): full step {p['full_step']:.1f} "
                       f"(H_in {p['h_in']:.1f}, L {p['low']:.1f}, H_out {p['h_out']:.1f}); adaptor step "
                       f"{p['adaptor_step']:.1f} (phi {p['adaptor_phi']:.1f}), **{p['adaptor_over_full_step']:.2f}** "
                       f"of a full step; per request: text encoding of a new prompt {p['text_encode_new_prompt']:.1f}, "
                       f"VAE decode {p['vae_decode']:.1f}. With no fixed cost at all these step costs allow "
                       f"2 / (1 + {p['adaptor_over_full_step']:.2f}) = **{p['ceiling_without_fixed_costs']:.2f}x** "
                       f"at clock 2. In FLOPs an adaptor step is {_flop_ratio():.2f} of a full step (flops_demo.json); "
                       f"text encoding and the VAE decode add to both modes.\n")
        if "speedup_end_to_end_inductor" in d:
            out.append(f"Inductor backend (the same engine with `backend=\"inductor\"`: step programs, text "
                       f"encoder and VAE decoder compiled; `_inductor` rows, same run): "
                       f"clockwork vs full end to end **{d['speedup_end_to_end_inductor']:.2f}x**, sampling only "
                       f"**{d['speedup_sampling_only_inductor']:.2f}x**; compiled over eager end to end: "
                       f"full {d['inductor_over_eager_full']:.2f}x, "
                       f"clockwork {d['inductor_over_eager_clockwork']:.2f}x. "
                       f"The part timings above are eager.\n")
        if "fused_ops_speedup" in d:
            out.append(f"Fused C++ ops (the adaptor's GroupNorm+shift+SiLU) on vs off, clockwork mode: "
                       f"**{d['fused_ops_speedup']:.3f}x** (extension built: {d['fused_ops_built']}).\n")
    else:
        out.append(missing("latency_demo.json"))
    d = load("latency_sd15_step.json")
    if d:
        t = d["timings"]
        out.append(f"SD v1.5 architecture, random weights, one step each (`{d['command']}`): full step "
                   f"{t['full_step']['median_s']:.2f} s, adaptor step {t['adaptor_step']['median_s']:.2f} s, "
                   f"ratio {d['adaptor_step_over_full_step']:.3f}.\n")
    return "\n".join(out)


def section_sdxl_latency():
    return render("latency_sdxl.json", "SDXL latency (CPU, 2 cores, random weights)", _sdxl_latency)


def _sdxl_latency(d):
    t = d["timings"]
    out = [f"Command: `{d['command']}`. {d['what']}; diffusers' default attention processor; {d['repeats']} "
           f"interleaved repeats after one warm-up call each, medians. The weights are random (from the SDXL base "
           f"UNet config, {d['unet_parameters'] / 1e9:.2f}B parameters): honest for latency, meaningless for "
           f"quality. The adaptor is the untrained {d['adaptor_parameters'] / 1e6:.1f}M ResNet adaptor as wide as "
           f"r_out; a trained one costs the same.\n"]
    labels = {"full_step": "full step (the UNet through the split)",
              "adaptor_step": "adaptor step (H_in + phi + H_out)",
              "identity_adaptor_step": "identity-adaptor step (H_in + H_out)", "adaptor_phi": "the adaptor phi alone"}
    rows = [[labels.get(k, k), f"{v['median_s']:.2f}", f"{v['p25_s']:.2f}-{v['p75_s']:.2f}",
             ", ".join(f"{x:.2f}" for x in v["times_s"])] for k, v in t.items()]
    out.append(table(["variant", "median s", "p25-p75 s", "each repeat s"], rows))
    flops = d.get("flops_512")
    flop_note = (f" In FLOPs an adaptor step is {flops['paper']:.3f} (paper convention) / {flops['full']:.3f} (full "
                 f"count) of a full step at this size (flops.count_arch)." if flops else "")
    out.append(f"\nAn adaptor step costs **{d['adaptor_step_over_full_step']:.3f}** of a full step (ratio of the "
               f"medians; paired, the median over rounds of full / adaptor is "
               f"{d['paired_adaptor_step_speedup']:.1f}x); "
               f"the identity adaptor's {d['identity_step_over_full_step']:.3f}.{flop_note} At 8 steps, clock 2 "
               f"(4 full, 4 adaptor steps) these step costs allow at most "
               f"2 / (1 + {d['adaptor_step_over_full_step']:.3f}) = **{d['step_ceiling_8_steps_clock_2']:.2f}x** on "
               f"the UNet.\n")
    e = d.get("end_to_end")
    if e:
        te = e["timings"]
        out.append(f"End to end (`{e['command']}`): the engine on a StableDiffusionXLPipeline of random SDXL-sized "
                   f"components (both text encoders, the SDXL VAE), {e['size']}x{e['size']}, {e['steps']} steps of "
                   f"{e['scheduler']}, guidance {e['guidance']}, a new prompt per call (text encoding and VAE decode "
                   f"included), " + (f"{e['repeats']} interleaved repeats" if e["repeats"] > 1 else
                                     "one call each (a single round: what fitted in ten minutes on the 2-core CPU)") +
                   " after a warm-up request cancelled after its first step:\n")
        out.append(table(["variant", "median s", "each repeat s"],
                         [[k, f"{v['median_s']:.1f}", ", ".join(f"{x:.1f}" for x in v["times_s"])]
                          for k, v in te.items()]))
        out.append(f"\nClockwork (clock 2, the untrained adaptor on steps "
                   f"{[i for i, k in enumerate(e['schedule']) if k.endswith('adaptor')]}) against full: "
                   f"**{e['speedup']:.2f}x**" + (f" (paired {e['paired_speedup']:.2f}x)" if e["repeats"] > 1 else "") +
                   f", against the {d['step_ceiling_8_steps_clock_2']:.2f}x the step costs allow: text encoding and "
                   "the VAE decode cost both modes alike.\n")
    else:
        out.append("End to end: not measured yet (`python benches/bench_sdxl_latency.py --e2e-only`).\n")
    return "\n".join(out)


def section_sd35_latency():
    return render("latency_sd35_medium.json", "SD3.5 medium latency (CPU, 2 cores, random weights)", _sd35_latency)


def _sd35_latency(d):
    t = d["timings"]
    out = [f"Command: `{d['command']}`. {d['what']}; {d['repeats']} interleaved repeats after one warm-up call "
           f"each, medians. Random weights ({d['transformer_parameters'] / 1e9:.2f}B parameters): honest for "
           "latency, meaningless for quality.\n"]
    labels = {"full_step": "full step (the transformer through the split)",
              "identity_adaptor_step": "identity-adaptor step (embeddings, first and last joint block, output)"}
    rows = [[labels.get(k, k), f"{v['median_s']:.2f}", f"{v['p25_s']:.2f}-{v['p75_s']:.2f}",
             ", ".join(f"{x:.2f}" for x in v["times_s"])] for k, v in t.items()]
    out.append(table(["variant", "median s", "p25-p75 s", "each repeat s"], rows))
    flops = d["flops_512"]
    out.append(f"\nAn identity-adaptor step costs **{d['identity_step_over_full_step']:.3f}** of a full step "
               f"(paired: {d['paired_identity_step_speedup']:.1f}x); in FLOPs {flops['full']:.3f} at this size.\n")
    e = d.get("end_to_end")
    if e:
        out.append(f"End to end: the engine on a StableDiffusion3Pipeline of the random transformer with CLIP-L and "
                   f"CLIP-G of their published sizes, T5 {e['t5']}, {e['size']}x{e['size']}, {e['steps']} steps of "
                   f"{e['scheduler']}, guidance {e['guidance']}, latents out (no VAE decode), a new prompt per call, "
                   f"{e['repeats']} interleaved repeats after a warm-up request cancelled after its first step:\n")
        out.append(table(["variant", "median s", "each repeat s"],
                         [[k, f"{v['median_s']:.1f}", ", ".join(f"{x:.1f}" for x in v["times_s"])]
                          for k, v in e["timings"].items()]))
        adaptor_steps = [i for i, k in enumerate(e["schedule"]) if k.endswith("adaptor")]
        out.append(f"\nClockwork with the identity adaptor (clock 2, adaptor steps {adaptor_steps}) against full: "
                   f"**{e['speedup']:.2f}x**" + (f" (paired {e['paired_speedup']:.2f}x)" if e["repeats"] > 1 else "")
                   + ".\n")
    return "\n".join(out)


def section_inductor():
    return render("inductor.json", "Compiled step programs (inductor backend) vs eager vs stock diffusers", _inductor)


def _inductor(d):
    quality = (load("quality_distill.json") or {}).get("variants", {})
    rows = []
    for name, v in d["variants"].items():
        base = name.removesuffix("@inductor")
        acc = quality.get(base, {}).get("single_colour_and_shape")
        n = v.get("numerics_vs_eager")
        spread = f"{v['latency_p25_s'] * 1e3:.0f}-{v['latency_p75_s'] * 1e3:.0f}"
        rows.append([name, f"{v['latency_s'] * 1e3:.1f} [{spread}]",
                     f"{v['speedup_vs_diffusers']:.2f}x / {v['paired_speedup_vs_diffusers']:.2f}x",
                     f"{v['over_eager']:.2f}x / {v['paired_over_eager']:.2f}x" if "over_eager" in v else "-",
                     f"{n['max_abs_diff']:.1e} / {n['images_with_an_8bit_pixel_changed']} of {n['images']}"
                     if n else "-",
                     pct(acc)])
    return (f"Command: `{d['command']}`; batch 1, CFG {d['guidance']} (students take it as their w), a new prompt per "
            f"call, {d['repeats']} interleaved repeats in one run; speed-up against `{d['reference']}`. "
            "`@inductor`: the same engine with `backend=\"inductor\"` (its first call, the untimed warm-up, compiles; "
            "with the weights frozen in, see docs/design.md). "
            "Speed-ups: ratio of medians / paired (median of per-round ratios). Numerics: the compiled variant's "
            "images against the eager variant's for the same captions and seeds "
            "(largest difference in [0, 1] / images with any 8-bit pixel changed). Colour+shape is the eager "
            "variant's score from quality_distill.json (another run), not re-scored.\n\n"
            + table(["variant", "median ms [p25-p75]", "vs diffusers", "over eager", "numerics vs eager",
                     "colour+shape (eager)"], rows) + "\n")


def section_alignment_inductor():
    return render("alignment_inductor.json", "Alignment of the compiled fastest student", lambda d: _eval_runs(
        d, "The inductor table above takes its colour+shape column from the eager runs; the bf16 text encoder's "
           "compiled embeddings differ from its eager ones (other bf16 kernels: see the numerics column), so these "
           "variants were scored compiled too."))


def section_alignment_1200():
    return render("alignment_1200.json", "Alignment on 1300 more images (a check of the 400 + 100 bench)",
                  lambda d: _eval_runs(d, "The same held-out captions as the benches, with other noise and three "
                                          "times the single-shape images: a smaller error bar on the gaps to the "
                                          "teacher (binomial standard error about 1 point at 1200 images; more, as "
                                          "captions repeat)."))


def _eval_runs(d, intro):
    rows = [[name, pct(r["generated"]["singles"]["colour_and_shape"]["accuracy"]),
             pct(r["generated"]["singles"]["all"]["accuracy"]), pct(r["generated"]["pairs"]["all"]["accuracy"]),
             f"{r['domain_fid']:.3f}", f"`{r['command']}`"] for name, r in d["runs"].items()]
    return (f"{intro} {d['note']}.\n\n"
            + table(["variant", "single: colour+shape", "single: all", "pairs: all", "domain FID", "command"], rows)
            + "\n")


def _flop_ratio() -> float:
    f = load("flops_demo.json")["full"]
    return f["adaptor_step_tflops"] / f["full_step_tflops"]


def section_quality(name, title, note=""):
    return render(name, title, lambda d: (note + "\n\n" if note else "") + _quality(d))


def _quality(d):
    out = []
    sched = f", {d['scheduler'].replace('Scheduler', '')}" if "scheduler" in d else ""
    out.append(f"Command: `{d['command']}`; CFG {d['guidance']:g}{sched}; {d['images']} images "
               f"({d['unique_captions']} unique held-out captions), same noise for every variant; PSNR/SSIM "
               f"and speed-up against `{d['reference']}` (latency: median "
               f"of interleaved repeats of one image in the same run; {_prompt_note(d)}).\n")
    rows = []
    flops = all("gflops_per_image" in v for v in d["variants"].values())
    for k, v in d["variants"].items():
        rows.append([k, pct(v["single_colour_and_shape"]), pct(v["single_all"]), pct(v["pair_all"]),
                     f"{v['domain_fid']:.3f}", f"{v['psnr_to_reference']:.2f}", f"{v['ssim_to_reference']:.4f}",
                     _latency_ms(v),
                     f"{v['latency_ratio']:.2f}x" if "latency_ratio" in v else "-"])
        if flops:
            rows[-1].append(f"{v['gflops_per_image']:.2f} ({v['flop_ratio']:.2f}x)")
    header = ["variant", "single: colour+shape", "single: all attributes", "pairs: all", "domain FID",
              f"PSNR to {d['reference']} (dB)", "SSIM", "latency ms, median [p25-p75]", "speed-up"]
    if flops:
        header.append("GFLOPs per image (ratio)")
    out.append(table(header, rows) + "\n")
    if "map_bytes_per_image" in d:
        mb = {k: f"{v / 2**20:.1f} MiB" for k, v in d["map_bytes_per_image"].items()}
        out.append("Attention maps cached per image (CFG batch 2): " + ", ".join(f"{k}: {v}" for k, v in mb.items()))
    return "\n".join(out)


def _prompt_note(d) -> str:
    if any(v.get("latency_prompts") == "fresh" for v in d["variants"].values()):
        return "a new prompt per call, so text encoding is timed for every variant"
    return ("one prompt repeated (an earlier setup of this bench), so the engine's prompt cache skipped text "
            "encoding (~9 ms) while stock diffusers paid it")


def _latency_ms(v) -> str:
    """median [p25-p75] ms of the interleaved repeats (older results: the median only)."""
    if "latency_s" not in v:
        return "-"
    if "latency_p25_s" not in v:
        return f"{v['latency_s'] * 1e3:.0f}"
    return f"{v['latency_s'] * 1e3:.0f} [{v['latency_p25_s'] * 1e3:.0f}-{v['latency_p75_s'] * 1e3:.0f}]"


def section_perturbation():
    return render("perturbation.json", "Why clockwork works: perturbation per resolution level", _perturbation)


def _perturbation(d):
    out = []
    out.append(f"Command: `{d['command']}`. Noise of {d['relative_noise']:.0%} of each layer output's std added at "
               f"one resolution level, every step, {d['prompts']} prompts; change of the final image vs the clean run. "
               f"Plot: benches/results/perturbation.png.\n")
    rows = [[k, f"{v['mse']:.5f}", f"{v['median_image_mse']:.6f}" if "median_image_mse" in v else "-",
             f"{v['psnr_db']:.2f}", v["layers"]] for k, v in d["demo_image_change_by_level"].items()]
    out.append(table(["demo level", "image MSE, mean", "median over images", "PSNR to clean (dB, mean)",
                      "layers perturbed"], rows))
    out.append("\nSD v1.5 GFLOPs per level (batch 1, paper convention): " + ", ".join(
        f"{k}: {v:.1f}" for k, v in d["sd15_gflops_by_level"].items()) + "\n")
    return "\n".join(out)


def section_e2e():
    out = ["## Against the peers (demo pipeline, one run per step count)\n",
           "`clockwork` runs the default adaptor (fitted at 8 DPM++ steps, clock 2) at every step count; "
           "`clockwork_fitted_<n>` runs the adaptor the demo ships for n steps (clockwork_adaptors/<n>-steps/, "
           "the one the engine picks for an n-step request) on clock 2; `clock_<name>` rows run a searched clock "
           "(`clockwork search-clock`, schedules in benches/results/clocks/): `identity_*` with the identity "
           "adaptor at the paper's cut 1, `identity_cut0_*` with it at cut 0 (an adaptor step runs only conv_in "
           "and the UNet's last layer: DeepCache's cut, where on DeepCache's own clock it gives DeepCache's "
           "latents, tests/test_deepcache_parity.py; the search starts from that clock where it has the budget; "
           "`identity_cut0_r0_*`: the search's start alone, no moves), "
           "`cut0_deepcache_clock_i<N>` the identity adaptor at cut 0 on DeepCache interval N's own clock (full "
           "steps 0, N, 2N, ...), so those rows score exactly as DeepCache and differ from it in speed only by the "
           "engine's loop and the run's timing noise, "
           "`learned_*` with the adaptor fitted for that step count, `_b<k>` the number of adaptor steps. "
           "The adaptor fitted at 4 steps is in the 4-step ablation ([clockwork.md](clockwork.md)). "
           "`student_*` rows (8 steps only) run "
           "each student at its own step count. A run whose command starts with OMP_NUM_THREADS=1 used one "
           "intra-op thread for every variant (the 2-core CPU was shared with other jobs, and two threads "
           "each on the busy CPU made every call many times slower).\n"]
    found = False
    for n in (4, 8, 20, 50):
        name = f"e2e_{n}.json"
        d = load(name)
        if d:
            found = True
            out.append(section_quality(name, f"{n} steps").replace("## ", "### ")
                       + f"\nPareto plot: benches/results/pareto_{n}.png\n")
            if _has_versus(d):
                out.append(_versus_deepcache(d))
            if d.get("clocks"):
                out.append(_clock_schedules(d))
    if not found:
        out.append(missing("e2e_8.json"))
    d = load("e2e_sd15.json")
    if d:
        t, f = d["timings"], d["unet_tflops_per_image"]
        rows = [[k, f"{v['median_s']:.1f} [{v['p25_s']:.1f}-{v['p75_s']:.1f}]", v["repeats"],
                 f"{d['speedup_vs_diffusers'][k]:.2f}x"] for k, v in t.items()]
        out.append(f"### SD v1.5 architecture, random weights, {d['steps']} steps at {d['size']}x{d['size']}\n\n"
                   f"Command: `{d['command']}`. {d['what']}. Schedule: {', '.join(d['schedule'])}.\n")
        out.append(table(["variant", "s per image, median [p25-p75]", "repeats", "speed-up vs diffusers"], rows))
        out.append(f"\nUNet TFLOPs per image ({f['convention']}): full {f['full']:.2f}, clockwork "
                   f"{f['clockwork']:.2f} ({1 - f['clockwork'] / f['full']:.1%} fewer).\n")
    return "\n".join(out)


def _binomial_se(v) -> float:
    c = v["singles"]["colour_and_shape"]
    return (c["accuracy"] * (1 - c["accuracy"]) / c["n"]) ** 0.5


PSNR_TIE_DB = 0.005  # below the tables' precision: the same images up to float rounding (DeepCache's clock at cut 0)


def _paired_speed(cw, dc) -> tuple[float, float] | None:
    """DeepCache's time over ours, paired by interleaved round: (geometric mean, its standard
    error as a factor), or None where a run kept no per-call times."""
    a, b = dc.get("latency_times_s"), cw.get("latency_times_s")
    if not a or not b or len(a) != len(b) or len(a) < 3:
        return None
    logs = [math.log(x / y) for x, y in zip(a, b, strict=True)]
    return math.exp(statistics.mean(logs)), math.exp(statistics.stdev(logs) / len(logs) ** 0.5)


def _meets(cw, dc) -> dict:
    """Each criterion: speed: DeepCache's time over ours (geometric mean over interleaved rounds) at
    least 1 less one standard error, where the run kept per-call times (else the speed-up, ratio of
    medians, >= DeepCache's); colour+shape >= DeepCache's less one standard error of the difference
    (binomial); PSNR to stock >= DeepCache's (less PSNR_TIE_DB)."""
    se = (_binomial_se(cw) ** 2 + _binomial_se(dc) ** 2) ** 0.5
    paired = _paired_speed(cw, dc)
    speed = cw["latency_ratio"] >= dc["latency_ratio"] if paired is None else paired[0] * paired[1] >= 1
    return {"speed": speed,
            "alignment": cw["single_colour_and_shape"] >= dc["single_colour_and_shape"] - se,
            "psnr": cw["psnr_to_reference"] >= dc["psnr_to_reference"] - PSNR_TIE_DB}


def _shortfall(cw, dc, meets: dict) -> str:
    """What a configuration misses a DeepCache setting by, criterion by criterion."""
    short = []
    if not meets["speed"]:
        paired = _paired_speed(cw, dc)
        short.append(f"speed-up {cw['latency_ratio'] - dc['latency_ratio']:+.2f}x" if paired is None
                     else f"time ratio {paired[0]:.3f} (± {100 * (paired[1] - 1):.1f}%)")
    if not meets["alignment"]:
        points = 100 * (cw["single_colour_and_shape"] - dc["single_colour_and_shape"])
        short.append(f"colour+shape {points:+.1f} points")
    if not meets["psnr"]:
        short.append(f"PSNR {cw['psnr_to_reference'] - dc['psnr_to_reference']:+.2f} dB")
    return "short: " + ", ".join(short)


VERSUS_HEADER = ["DeepCache", "speed-up", "colour+shape", "PSNR (dB)", "clockwork", "speed-up", "time ratio",
                 "colour+shape", "PSNR (dB)", "verdict"]


def _has_versus(d) -> bool:
    return any(k.startswith("deepcache_") for k in d["variants"]) and any(k.startswith("clock_") for k in d["variants"])


DEEPCACHE = (("deepcache_",), ("clock", "identity_adaptor", "cut0_deepcache_clock"))  # (peers, ours) by name
SD3_CACHES = (("mag_", "taylorseer_", "pab_", "faster_"), ("identity_", "clockwork_", "clock_", "learned_on_"))
FLUX_CACHES = (("first_block_", *SD3_CACHES[0]), SD3_CACHES[1])  # bench_sd3_peers.py --model demo-flux


def _versus_rows(d, sides=DEEPCACHE) -> list[list[str]]:
    """Per peer setting (DeepCache's by default; sides: the name prefixes of the peers' and of
    clockwork's variants): the fastest clockwork configuration meeting it on all three, and those
    meeting it with the best PSNR and the best colour+shape where they are others; else the fastest
    one meeting it on alignment and PSNR, else the as-fast one with the best PSNR, else the fastest
    one, with what it misses by; and the identity adaptor at cut 0 on DeepCache's own clock."""
    vs = d["variants"]
    peers, ours_prefixes = sides
    ours = {k: v for k, v in vs.items() if k.startswith(ours_prefixes) and "latency_ratio" in v}
    speed, psnr = (lambda k: ours[k]["latency_ratio"]), (lambda k: ours[k]["psnr_to_reference"])
    alignment = lambda k: ours[k]["single_colour_and_shape"]  # noqa: E731
    rows = []
    for name, dc in vs.items():
        if not name.startswith(peers) or not ours:
            continue
        meets = {k: _meets(v, dc) for k, v in ours.items()}
        full = [k for k in ours if all(meets[k].values())]
        as_good = [k for k in ours if meets[k]["alignment"] and meets[k]["psnr"]]
        fast = [k for k in ours if meets[k]["speed"]]
        picks = []  # (configuration, verdict)
        if full:
            fastest = max(full, key=speed)
            picks = [(fastest, "meets all three (the fastest)")]
            for label, key, tie in (("the best PSNR", psnr, PSNR_TIE_DB), ("the best colour+shape", alignment, 0)):
                best = max(full, key=key)
                if key(best) > key(fastest) + tie and best not in [p for p, _ in picks]:
                    picks.append((best, f"meets all three ({label})"))
        else:
            pick = max(as_good, key=speed) if as_good else max(fast, key=psnr) if fast else max(ours, key=speed)
            picks = [(pick, _shortfall(ours[pick], dc, meets[pick]))]
        same = "cut0_deepcache_clock_" + name.removeprefix("deepcache_")  # DeepCache's images
        if name.startswith("deepcache_") and same in ours and same not in [p for p, _ in picks]:
            verdict = "meets all three" if all(meets[same].values()) else _shortfall(ours[same], dc, meets[same])
            picks.append((same, verdict + " (DeepCache's clock)"))
        for pick, verdict in picks:
            cw = ours[pick]
            paired = _paired_speed(cw, dc)
            rows.append([name, f"{dc['latency_ratio']:.2f}x", f"{pct(dc['single_colour_and_shape'])} "
                         f"± {100 * _binomial_se(dc):.1f}", f"{dc['psnr_to_reference']:.2f}", pick,
                         f"{cw['latency_ratio']:.2f}x",
                         "-" if paired is None else f"{paired[0]:.3f} ± {100 * (paired[1] - 1):.1f}%",
                         f"{pct(cw['single_colour_and_shape'])} ± {100 * _binomial_se(cw):.1f}",
                         f"{cw['psnr_to_reference']:.2f}", verdict])
    return rows


def _versus_header(sides=DEEPCACHE) -> list[str]:
    return ["DeepCache" if sides is DEEPCACHE else "diffusers cache", *VERSUS_HEADER[1:]]


def _versus_deepcache(d, sides=DEEPCACHE) -> str:
    rows = _versus_rows(d, sides)
    n = next(iter(d["variants"].values()))["singles"]["colour_and_shape"]["n"]
    peer = "DeepCache" if sides is DEEPCACHE else "the cache"
    text = (f"Clockwork against each {'DeepCache' if sides is DEEPCACHE else 'cache'} setting (same run): a "
            "configuration meets a setting when it is "
            f"at least as fast (the time ratio: {peer}'s time over its own, the geometric mean over the "
            "interleaved latency rounds, each round timing every variant back to back, at least 1 less one "
            "standard error of that mean; in runs that kept no per-call times, its speed-up, a ratio of medians, "
            f"at least {peer}'s), its colour+shape at least {peer}'s less one "
            f"standard error of the difference (binomial, {n} single-shape images each: "
            "sqrt(SE_a^2 + SE_b^2); ± below is each rate's SE in points) and its PSNR to stock diffusers at least "
            f"{peer}'s (less {PSNR_TIE_DB} dB: equal images up to float rounding). Listed: the fastest "
            "configuration that meets all three; where none does, the fastest that meets it on colour+shape and "
            "PSNR, else the one as fast with the best PSNR (else the fastest), and what it misses by; where others "
            "that meet all three have a better PSNR or colour+shape, those too")
    if sides is DEEPCACHE:
        text += "; and the identity adaptor at cut 0 on DeepCache's own clock (DeepCache's images)"
    return text + ".\n\n" + table(_versus_header(sides), rows) + "\n"


def _clock_schedules(d) -> str:
    rows = [[k, c["adaptor"] if c["adaptor"] == "identity" else c.get("adaptor_folder") or c["adaptor"],
             c.get("cut", 1), f"{len(c['adaptor_steps'])} of {c['steps']}", " ".join(map(str, c["adaptor_steps"])),
             f"{c['search_seconds']:.0f} s, {c['search_sampler_runs']} runs", c["calibration_captions"],
             f"`{c['command']}`"] for k, c in d["clocks"].items()]
    return ("Searched clocks (0-based adaptor steps; search cost: the whole command's, every budget it lists; "
            "calibration captions from the training split, one noise draw):\n\n"
            + table(["variant", "adaptor", "cut", "adaptor steps", "which (0-based)", "search cost",
                     "calibration captions", "command"], rows) + "\n")


def section_serve():
    return render("serve_demo.json", "Serving under load: continuous batching over HTTP (demo)", _serve)


def _serve(d):
    labels = {"off": "serialized", "request": "request-level batching", "step": "step-level continuous batching"}
    cap = d["serialized_capacity_rps"]
    out = [f"Command: `{d['command']}`. `clockwork serve` on loopback, {d['mode']}; a fresh server process a "
           f"mode. Serialized capacity (one request in flight): {cap:.2f} requests/s "
           f"(median service {d['serialized_service_p50_s'] * 1e3:.0f} ms). Goodput: the share of offered requests "
           f"answered with an image within {d['deadline_s']:g} s. Plot: benches/results/serve_demo_latency.png.\n"]
    rows = []
    base = d["phases"]["off"]["saturation"]["throughput_rps"]
    for mode, phase in d["phases"].items():
        sat = phase["saturation"]
        rows.append([labels[mode], f"{sat['throughput_rps']:.2f}", f"{sat['throughput_rps'] / base:.2f}x",
                     _s(sat["p50_s"]), _s(sat["p99_s"])])
    out.append(table(["saturation (32 in flight)", "images/s", "vs serialized", "p50 (s)", "p99 (s)"], rows))
    rows = []
    for mode, phase in d["phases"].items():
        for r in phase["rates"]:
            rows.append([labels[mode], f"{r['rate_rps']:.2f} ({r['rate_rps'] / cap:.1f}x)", r["offered"],
                         r["answered_ok"], r["lost"], f"{r['throughput_rps']:.2f}", _s(r["p50_s"]), _s(r["p95_s"]),
                         _s(r["p99_s"]), pct(r["goodput"])])
    out.append("\nOpen-loop Poisson arrivals (each rate: at most the offered count, arrivals over at most "
               "the offered seconds, then answers awaited for a bounded time; `lost` = never answered):\n")
    out.append(table(["mode", "offered rate (req/s)", "offered", "answered", "lost", "throughput", "p50 (s)",
                      "p95 (s)", "p99 (s)", "goodput"], rows))
    soak = d["phases"].get("step", {}).get("soak")
    if soak:
        out.append(f"\nSoak (step batching, {soak['requests']} requests, 16 in flight): {soak['ok']} answered, "
                   f"resident memory {soak['rss_after_warmup_mb']:.0f} MB after warm-up, "
                   f"{soak['rss_end_mb']:.0f} MB at the end ({soak['growth']:+.1%}).\n")
    return "\n".join(out)


def _s(v):
    return "-" if v is None else f"{v:.3f}"


def section_soak():
    inductor = load("soak_demo_inductor.json")
    return render("soak_demo.json", "Soak: memory over many requests", _soak) + (_soak(inductor) if inductor else "")


def _soak(d):
    steps = "mixed step counts" if d.get("steps", "4-8") == "4-8" else f"{d['steps']} steps"
    backend = f", {d['backend']} backend" if "backend" in d else ""
    return (f"Command: `{d['command']}`. {d['calls']} generate() calls (mixed prompts and modes, {steps}{backend}): "
            f"resident memory {d['rss_after_warmup_mb']:.0f} MiB after warm-up, {d['rss_end_mb']:.0f} MiB at the end "
            f"(**{100 * d['growth']:+.1f}%**). Cache bounds: {d['bounds']}.\n")


def section_overhead():
    return render("overhead_demo.json", "Engine overhead per step (demo pipeline, CPU)", _overhead)


def _overhead(d):
    out = []
    out.append(f"Command: `{d['command']}`. Time in the sampling loop outside the model call (CFG concat/split, "
               f"solver update, buffer copies, loop): **{100 * d['overhead_fraction']:.2f}%** of "
               f"{d['sample_ms']:.1f} ms.\n")
    return "\n".join(out)


def section_kernels():
    return render("kernels.json", "Kernel microbenchmarks (pytest-benchmark)", _kernels)


def _kernels(d):
    out = []
    rows = [[b["name"], f"{b['stats']['median'] * 1e3:.3f}", b["stats"]["rounds"]] for b in d["benchmarks"]]
    out.append("Command: `python -m pytest benches/bench_kernels.py --benchmark-json benches/results/kernels.json`\n")
    out.append(table(["benchmark", "median ms", "rounds"], rows) + "\n")
    return "\n".join(out)


PLAIN_LOSS = "Adaptors fitted with the plain L2 loss (the recipe before the guided loss)."
DISTILL_NOTE = ("The committed students, distilled from the committed teacher: guidance distillation 1500 steps "
                "with w ~ U[1.5, 5]; guided-8's adaptor fitted at w = 3 with the unrolled recipe "
                "(unrolled, every step, one pass, 12 epochs). progressive-4 and -2: on guided-8's own "
                "sampler trajectories (`--data trajectories`, 8192 trajectories, 3000 steps per halving), each on "
                "every other timestep of its teacher's grid; the rounds, Meng et al.'s noised data and the "
                "clockwork adaptors fitted for them (not shipped: 85% and 62%) are in the next table. `+reuse`: "
                "attention maps reused at the last step; with clockwork that is an adaptor step, which on this UNet "
                "runs no attention layer, so the images equal those without reuse. `+tiny_decoder`: the "
                "demo's tiny decoder (`EngineConfig(decoder=\"tiny\")`; the shipped one, 0.23 GFLOPs "
                "against the VAE decoder's 0.51) "
                "in place of the VAE decoder. `+bf16_text`: also a bfloat16 copy of the text encoder "
                "(`EngineConfig(text_dtype=\"bfloat16\")`, fp32 embeddings to the UNet; the same FLOPs, half the "
                "weight bytes). `+clockwork_unshipped`: clockwork on a student that ships no adaptor, with "
                "the one fitted for it in benches/adaptors/ (not shipped: see the alignment). GFLOPs per image: "
                "torch.utils.flop_counter over one generate() of a new "
                "prompt (text encoding, every model evaluation, the decoder; stock diffusers also encodes the empty "
                "negative prompt every call).")


EARLIER_UNET = ("_Measured on the earlier demo UNet, which had transformer blocks at 16x16 as well as at 8x8, "
                "with its adaptors and students (the committed UNet is fine-tuned from it without the 16x16 blocks: "
                "[design.md](../design.md#the-demo-model)); the JSON records the demo UNet a result ran on._\n")


GPU_PEER = "diffusers_compiled"  # the baseline users pick: stock diffusers + torch.compile on its UNet
GPU_VARIANTS = {  # gpu_check.json's variant names -> what they are (the "compiled" column says how they run)
    "diffusers": "stock diffusers (SDPA)",
    "diffusers_compiled": "diffusers + torch.compile on its UNet (the peer)",
    "engine_full_uncompiled": "engine, full",
    "engine_full": "engine, full",
    "clockwork_identity_uncompiled": "clockwork, identity adaptor",
    "clockwork_identity": "clockwork, identity adaptor",
    "clockwork_adaptor": "clockwork, untrained adaptor",
    "clockwork_reuse_uncompiled": "clockwork (identity) + attention reuse",
    # the earlier check (before the compiled backend): its engine rows ran uncompiled
    "engine_full_eager": "engine, full, eager step programs",
    "clockwork_reuse": "clockwork (identity) + attention reuse",
}
GPU_PARITY = {  # sd15 / sdxl parity keys -> what they compare (max |difference| of the final latents)
    "compiled_vs_uncompiled_full_max_abs": "compiled vs uncompiled step programs, full",
    "compiled_vs_uncompiled_clockwork_max_abs": "compiled vs uncompiled, clockwork (identity)",
    "engine_vs_diffusers_max_abs": "engine (uncompiled) vs stock diffusers",
    "compiled_engine_vs_diffusers_max_abs": "compiled engine vs stock diffusers",
    "diffusers_compiled_vs_diffusers_max_abs": "diffusers + torch.compile vs stock diffusers",
    "graphs_vs_eager_max_abs": "CUDA graphs vs eager programs",  # the earlier check
}
FULL_STEP_TARGET_MS = 8.0  # the compiled backend's target: one full step's graph replay (SD v1.5, 512x512, fp16)


def section_gpu():
    title = "## GPU check (the CUDA path on a GPU)\n\n"
    d = load("gpu_check.json")
    if d is None or d.get("dry_run"):
        why = "benches/results/gpu_check.json is missing" if d is None else \
            "benches/results/gpu_check.json is a dry run's (CPU, tiny models)"
        return title + (f"_Not run on a GPU: {why}._ The prepared check is `bash benches/gpu/check.sh` "
                        "(benches/gpu/README.md: the device call, what it carries, its time limit); CI runs its "
                        "dry run (tests/test_gpu_check.py). Until it runs on a GPU, the Triton kernels have run "
                        "only under Triton's interpreter, the CUDA kernels have only been compiled, and the "
                        "CUDA-graph backend has not executed.\n")
    return title + _gpu(d)


def _legacy_gpu(d) -> bool:
    """The earlier check's format (before the compiled backend): its sd15_compile phase timed the
    peer, and its engine rows (engine_full, clockwork_*) ran uncompiled on CUDA graphs."""
    return "sd15_compile" in d["phases"] or "engine_full_eager" in d["phases"].get("sd15", {}).get("timings", {})


def _compiled(name, p, legacy=False) -> str:
    """How a variant runs: the 'compiled' column."""
    if name == "diffusers":
        return "no"
    if name == "diffusers_compiled":
        options = p.get("compile_options")
        return f"torch.compile({_compile_options(options)})" if options else "torch.compile"
    if name == "engine_full_eager":
        return "no (eager)"
    if legacy or name.endswith("_uncompiled"):
        return "no (CUDA graphs)"
    return "**yes** (inductor, CUDA graphs)"


def _ratio(p, key, baseline, name) -> str:
    if name == baseline:
        return "1.00x"
    s = p.get(key, {}).get(name)
    return "-" if s is None else f"{s['paired']:.2f}x"


def _first_call(p, name) -> float:
    return p.get("first_call_s", {}).get(name, p["timings"][name]["warmup_s"][0])


def _gpu_timings(p, legacy=False, images=None):
    """One row per variant: median, spread, paired speed-ups vs the peer (when the phase timed it)
    and vs stock diffusers, first-call seconds. images: the batch size, for an images/s column."""
    timings = p["timings"]
    peer = p.get("peer", GPU_PEER) if "speedup_vs_peer" in p else None
    stock = "diffusers" in timings and "speedup_vs_diffusers" in p
    header = ["variant", "compiled", "median ms", "p25-p75 ms"]
    header += ["images/s"] if images else []
    header += ["vs diffusers + compile (paired)"] if peer else []
    header += ["vs stock diffusers (paired)"] if stock else []
    header += ["first call s", "repeats"]
    rows = []
    for name, t in timings.items():
        row = [GPU_VARIANTS.get(name, name), _compiled(name, p, legacy), f"{t['median_s'] * 1e3:.1f}",
               f"{t['p25_s'] * 1e3:.1f}-{t['p75_s'] * 1e3:.1f}"]
        row += [f"{p['images_per_s'].get(name, images / t['median_s']):.2f}"] if images else []
        row += [_ratio(p, "speedup_vs_peer", peer, name)] if peer else []
        row += [_ratio(p, "speedup_vs_diffusers", "diffusers", name)] if stock else []
        rows.append(row + [f"{_first_call(p, name):.2f}", t["repeats"]])
    return table(header, rows)


TIMINGS_NOTE = ("Paired speed-ups: the median of per-round ratios of interleaved calls, above 1 is faster than the "
                "baseline. First call s: the variant's first call, where compiling and capturing happen (the "
                "compile cost).")


def _compile_options(options) -> str:
    """{'mode': 'reduce-overhead', 'fullgraph': 'True'} -> mode="reduce-overhead", fullgraph=True
    (the harness records the options' values as strings)."""
    def value(v):
        return str(v) if not isinstance(v, str) or v in ("True", "False", "None") else f'"{v}"'
    return ", ".join(f"{k}={value(v)}" for k, v in options.items())


def _profile_steps(steps):
    """One entry per (step, kind): on a GPU the profile lists each step's range twice, the second
    with 0 ms of host time; the times of a step's entries are summed."""
    merged = {}
    for s in steps:
        merged[(s["step"], s["kind"])] = merged.get((s["step"], s["kind"]), 0.0) + s["ms"]
    return ", ".join(f"{step} {kind} {ms:.2f}" for (step, kind), ms in merged.items())


def _parity(par, dtype) -> str:
    """Each max |difference| of the final latents, and its size against the latents' own max |x|."""
    scale = par.get("latents_max_abs")
    items = []
    for key, label in GPU_PARITY.items():
        if par.get(key) is not None:
            rel = f" ({100 * par[key] / scale:.2g}% of max |x|)" if scale and par[key] else ""
            items.append(f"{label} {par[key]:.2e}{rel}")
    bound = f"max |x| {scale:.2f}, " if scale is not None else ""
    return (f"Parity, max |difference| of the final latents, same prompt and seed ({bound}{dtype}): "
            + "; ".join(items) + ".\n")


def _gpu_overhead(o) -> str:
    t = o["timings"]
    if "replay_ms" not in o:  # the earlier check
        return (f"Sampling alone (cached prompt, latents out): engine {t['engine_full']['median_s'] * 1e3:.1f} ms, "
                f"diffusers {t['diffusers']['median_s'] * 1e3:.1f} ms; one full step's graph replay "
                f"{o['full_step_replay_ms']:.2f} ms, diffusers' eager UNet forward {o['unet_forward_eager_ms']:.2f} "
                f"ms; beyond those, the engine costs {o['engine_ms_per_step_beyond_replays']:.2f} ms per step, "
                f"diffusers {o['diffusers_ms_per_step_beyond_unet']:.2f} ms.\n")
    r = o["replay_ms"]
    full, full_u = r.get("engine_full:full"), r.get("engine_full_uncompiled:full")
    ada, ada_u = r.get("clockwork_identity:clockwork.adaptor"), r.get("clockwork_identity_uncompiled:clockwork.adaptor")
    verdict = "met" if full is not None and full <= FULL_STEP_TARGET_MS else "**not met**"
    ms = lambda v: "-" if v is None else f"{v:.2f} ms"  # noqa: E731
    return (f"One step program's CUDA-graph replay (CUDA events): full step {ms(full)} compiled vs {ms(full_u)} "
            f"uncompiled (target: one full step <= {FULL_STEP_TARGET_MS:g} ms, {verdict}); clockwork's adaptor "
            f"step {ms(ada)} compiled vs {ms(ada_u)} uncompiled. Sampling alone (cached prompt, latents out), "
            f"compiled full mode: {t['engine_full']['median_s'] * 1e3:.1f} ms; beyond its full-step replays the "
            f"engine costs {o['engine_ms_per_step_beyond_replays']:.2f} ms per step.\n")


def _gpu_sd15(p, d, legacy):
    dtype = d.get("settings", {}).get("dtype_name", "")
    out = [f"### {p['what']}\n"]
    if not legacy:
        params = p.get("adaptor_parameters")
        out.append(f"Engine backend {p.get('backend')}, inductor option set `{p.get('inductor')}`; diffusers' "
                   f"attention processor {p.get('attention_processor')}" +
                   (f"; the untrained adaptor has {params / 1e6:.1f}M parameters" if params and params >= 1e5 else
                    f"; the untrained adaptor has {params} parameters" if params else "") + ".\n")
    out += [_gpu_timings(p, legacy), "", TIMINGS_NOTE]
    r = p.get("reuse")
    if r:
        out.append(f"\nAttention reuse at steps {r['steps']}: {r['layers_cached']} layers' maps cached "
                   f"({r['cached_bytes'] / 2**20:.0f} MiB), {r['layers_over_cap']} over the cap.\n")
    else:
        out.append("")
    if p.get("parity"):
        out.append(_parity(p["parity"], dtype))
    if p.get("overhead"):
        out.append(_gpu_overhead(p["overhead"]))
    return out


def _gpu_batch4(p, d, legacy):
    if "compile_options" not in p:  # the peer is sd15's (the same compiled pipeline)
        p = {**p, "compile_options": d["phases"].get("sd15", {}).get("compile_options")}
    out = [f"### Batch {p['batch']}: {p['what']}\n", _gpu_timings(p, legacy, images=p["batch"]), ""]
    ips = p.get("images_per_s", {})
    peer = p.get("peer", GPU_PEER)
    if peer in ips:
        vs = [f"{GPU_VARIANTS.get(n, n)}{' (compiled)' if not n.endswith('_uncompiled') else ''} "
              f"{ips[n]:.2f} ({ips[n] / ips[peer]:.2f}x)" for n in ips if n not in (peer, "diffusers")]
        out.append(f"Images per second against the peer's {ips[peer]:.2f}: " + ", ".join(vs) + ".\n")
    return out


def _gpu_cold_start(p, d, legacy):
    out = [f"### Cold start: {p['what']}\n"]
    c = p.get("compile_command")
    if c:
        entries = c.get("entries")
        if isinstance(entries, dict):
            entries = ", ".join(f"{n} {kind}" for kind, n in entries.items())
        out.append(f"`clockwork compile --model DIR` beforehand: {c['seconds']:.1f} s, writing "
                   f"{c['artifact_bytes'] / 1e6:.1f} MB of artifacts ({entries}).\n")
    else:
        out.append("`clockwork compile` did not run (no artifacts).\n")
    rows = []
    for name, label in (("with_artifacts", "with the artifacts"), ("without_artifacts", "without them")):
        r = p.get(name)
        if r is None:
            continue
        if "skipped" in r:
            rows.append([label, f"skipped: {r['skipped']}", "-", "-", "-"])
        else:
            rows.append([label, f"{r['listening_s']:.2f}", f"{r['first_answer_s']:.2f}", f"{r['second_request_s']:.3f}",
                         r["png_bytes"]])
    out.append(table(["clockwork serve", "listening s", "first answer s", "second request s", "PNG bytes"], rows))
    return out + [""]


def _gpu_sdxl(p, d, legacy):
    dtype = d.get("settings", {}).get("dtype_name", "")
    out = [f"### {p['what']}\n", _gpu_timings(p, legacy), ""]
    if p.get("parity"):
        out.append(_parity(p["parity"], dtype))
    return out + [""]


def _gpu_sd35(p, d, legacy):
    out = _gpu_sdxl(p, d, legacy)
    caches = ", ".join(f"`{n}` ({c['kind']}: " + ", ".join(f"{k}={v}" for k, v in c.items() if k != "kind") + ")"
                       for n, c in p.get("caches", {}).items())
    out.insert(-1, f"diffusers' caches, each on its own copy of the transformer (eval/diffusers_caches.py): {caches}; "
                   "FirstBlockCache does not run on SD3.\n")
    return out


def _gpu_flux(p, d, legacy):
    out = _gpu_sdxl(p, d, legacy)
    caches = ", ".join(f"`{n}` ({c['config']}: " + ", ".join(f"{k}={v}" for k, v in c.items() if k != "config") + ")"
                       for n, c in p.get("caches", {}).items())
    out.insert(-1, f"diffusers' caches, enabled on the shared transformer around their own calls: {caches}.\n")
    return out


def _gpu_serving(p, d, legacy):
    out = [f"### Serving: {p['what']}\n",
           f"One request alone: {p['service_s']:.3f} s; offered {p['offered_rate_per_s']:.2f} requests/s.\n"]
    rows, errors = [], []
    for name, label in (("off", "one request at a time"), ("step", "step-level continuous batching")):
        r = p.get(name)
        if r is None:
            continue
        q = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
        rows.append([label, r["answered"], len(r["errors"]), f"{r['wall_s']:.2f}", f"{r['throughput_per_s']:.2f}",
                     q(r["p50_s"]), q(r["p99_s"])])
        errors += [f"{label}: {e}" for e in r["errors"][:1]]
    out.append(table(["batching", "answered", "errors", "wall s", "throughput /s", "p50 s", "p99 s"], rows))
    if errors:
        out.append("\nFirst error: " + "; ".join(f"`{e}`" for e in errors) + ".")
    return out + [""]


def _gpu_options(p, d, legacy):
    out = ["### Inductor option sets (the compiled engine's full mode, SD v1.5, batch 1)\n"]
    rows = []
    for name, t in p["timings"].items():
        ratio = "1.00x" if name == "default" else _ratio(p, "speedup_vs_default", "default", name)
        rows.append([f"`{name}`", f"{t['median_s'] * 1e3:.1f}", ratio, f"{_first_call(p, name):.2f}", t["repeats"]])
    for name, why in p.get("skipped", {}).items():
        rows.append([f"`{name}`", f"skipped: {why}", "-", "-", "-"])
    cl = p.get("channels_last")
    if cl and "skipped" not in cl:  # timed in a second run against its own `default`
        default_ms = cl["timings"]["default"]["median_s"] * 1e3
        for name, t in cl["timings"].items():
            if name != "default":
                rows.append([f"{GPU_LAYOUTS.get(name, name)} (against the second run's `default`, {default_ms:.1f} ms)",
                             f"{t['median_s'] * 1e3:.1f}", _ratio(cl, "speedup_vs_default", "default", name),
                             f"{_first_call(cl, name):.2f}", t["repeats"]])
    elif cl:
        rows.append(["channels-last UNet", f"skipped: {cl['skipped']}", "-", "-", "-"])
    out.append(table(["option set", "median ms", "vs default (paired)", "first call s (compile)", "repeats"], rows))
    return out + [""]


GPU_LAYOUTS = {  # the options phase's channels_last run: its variants besides the compiled default
    "channels_last": "channels-last UNet, compiled", "uncompiled": "uncompiled (CUDA graphs)",
    "uncompiled_channels_last": "channels-last UNet, uncompiled (CUDA graphs)"}


def _gpu_profile(p, d, legacy):
    extra = ""
    if p.get("model_ms") is not None and p.get("overhead_fraction") is not None:
        extra = f", model {p['model_ms']:.1f} ms (overhead {100 * p['overhead_fraction']:.1f}%)"
    return [f"### Profile of one clockwork request\n\n{p['what']}. Trace: {p['trace']} (in the check's output). "
            f"Sampling {p['sample_ms']:.1f} ms{extra}; per step (ms): {_profile_steps(p['steps'])}.\n"]


def _gpu_sd15_compile(p, d, legacy):  # the earlier check's torch.compile phase
    first = p.get("compile_first_call_s")
    return [f"### torch.compile on diffusers' UNet ({_compile_options(p['compile_options'])}"
            + (f"; first call {first:.0f} s" if first is not None else "") + ")\n", _gpu_timings(p, legacy), ""]


GPU_PHASES = {"sd15": _gpu_sd15, "profile": _gpu_profile, "batch4": _gpu_batch4, "cold_start": _gpu_cold_start,
              "sdxl": _gpu_sdxl, "sd35": _gpu_sd35, "flux": _gpu_flux, "serving": _gpu_serving, "options": _gpu_options,
              "sd15_compile": _gpu_sd15_compile}


def _gpu(d):
    dev = d["device"]
    legacy = _legacy_gpu(d)
    out = [f"Command: `bash benches/gpu/check.sh` ({d['started_utc']}, {d['elapsed_s']:.0f} s of its "
           f"{d['budget_s']:.0f} s budget after set-up) on {dev.get('gpu')} (compute capability "
           f"{dev.get('capability')}), torch {dev['torch']} (CUDA {dev['cuda']}), triton {dev['triton']}, "
           f"diffusers {dev['diffusers']}. Random weights: honest for latency and parity, not for images.\n"]
    if not legacy:
        out.append("The peer is stock diffusers with `torch.compile` on its UNet (mode reduce-overhead, fullgraph: "
                   "what diffusers documents), timed in the same process and interleaved with every engine variant. "
                   "Compiled engine rows run step programs compiled by inductor and captured as CUDA graphs; "
                   "uncompiled rows capture the same programs uncompiled.\n")
    setup = ", ".join(f"{s['step']} rc {s['rc']} ({s['seconds']} s)" for s in d.get("setup", []))
    if setup:
        out.append(f"Set-up steps: {setup}.\n")
    tests = d.get("gpu_tests")
    if tests:
        out.append(f"GPU tests (`pytest -m gpu tests/test_gpu_cuda.py`): {tests['passed']} passed, "
                   f"{tests['failures'] + tests['errors']} failed, {tests['skipped']} skipped "
                   f"({tests['seconds']:.0f} s).\n")
        for f in tests["failed"]:
            message = " ".join(f["message"].split())  # one list item: pytest's message has line breaks
            out.append(f"- failed: `{f['test']}`: {message if len(message) <= 400 else message[:400] + '...'}")
    else:
        out.append("GPU tests: not run in this check.\n")
    for name, p in d["phases"].items():
        render_phase = GPU_PHASES.get(name)
        if render_phase is None:  # a phase this renderer does not know
            continue
        if p.get("status") != "ok":
            why = p.get("reason") or " ".join(str(p.get("error", "")).split())[:300]
            out.append(f"\nPhase {name}: {p.get('status')}" + (f" ({why})" if why else "") + ".\n")
            continue
        out.append("")
        out += render_phase(p, d, legacy)
    return "\n".join(out) + "\n"


def _quality_section(name, title, note=""):
    return name, lambda: section_quality(name, title, note)


SD3_STEPS = (8, 20, 28)
FLUX_STEPS = (4, 8, 28)


def section_sd3_attention():
    return render("sd3_attention.json", "Attention-map reuse on SD3's joint attention", _sd3_attention)


def _sd3_attention(d):
    sizes = [[k, f"{v['fp16_gib']:.3g}", f"{v['fp32_gib']:.3g}"] for k, v in d["map_gib_per_image"].items()]
    layer = d["layer"]
    times = [[k, f"{v['median_s'] * 1e3:.1f} [{v['p25_s'] * 1e3:.1f}-{v['p75_s'] * 1e3:.1f}]",
              f"{d['vs_sdpa'][k]:.2f}x"] for k, v in d["timings"].items()]
    return (f"Command: `{d['command']}`. Reuse keeps each layer's P = softmax(QK^T/sqrt(d)); on MMDiT every joint "
            "attention is over the image and text tokens together, so P is (N_img + N_txt)^2 a head. The maps one "
            "image must keep (CFG batch 2, every layer; SD3.5 medium's image-only second attention too), from the "
            "published configs:\n\n" + table(["model@side", "GiB (fp16)", "GiB (fp32)"], sizes)
            + f"\n\nOne SD3.5-medium joint attention at 512x512 ({layer['rows']} rows, {layer['heads']} heads of "
            f"{layer['head_dim']}, {layer['tokens']} tokens; one fp32 map {d['map_gib_per_layer_fp32']:.2f} GiB), ms, "
            "median [p25-p75] of interleaved repeats:\n\n"
            + table(["path", "ms", "vs fused SDPA"], times) + "\n")


def section_controlnet_demo():
    return render("controlnet_demo.json", "The demo's mask ControlNet, full and clockwork", _controlnet_demo)


def _controlnet_demo(d):
    v = d["variants"]
    rows = [[name, f"{r['mask_iou']:.3f}", f"{r['mask_iou_singles']:.3f}", f"{r['mask_iou_pairs']:.3f}",
             pct(r["single_colour_and_shape"]), pct(r["pair_objects"]), f"{r['psnr_to_full']:.2f}",
             f"{1e3 * r['latency_s']:.1f}", f"{r['speedup_vs_full']:.2f}x", f"{r['gflops_per_image']:.3f}"]
            for name, r in v.items()]
    return (f"Command: `{d['command']}`; {d['images']} held-out captions ({d['singles']} single shapes, {d['pairs']} "
            f"pairs), {d['steps']} DPM++ steps, CFG {d['guidance']}; each caption with a mask of its own scene's "
            "layout (demo/train_controlnet.py trains the ControlNet on such masks). `no_control`: the demo without a "
            "ControlNet; `full`: with it; `clockwork`: with it and the shipped adaptor (on adaptor steps the "
            "ControlNet runs only the blocks whose residuals the run part of the UNet takes). Mask IoU: drawn "
            "pixels (nearest palette entry not the background) against the mask. Latency: batch 1, a new caption "
            f"a call, medians of {d['latency_rounds']} interleaved rounds; speed-up against `full` paired by "
            "round.\n\n"
            + table(["variant", "mask IoU", "IoU singles", "IoU pairs", "colour+shape", "pair objects",
                     "PSNR to full (dB)", "latency ms", "vs full", "GFLOPs/image"], rows) + "\n")


def section_lora_drift():
    return render("lora_drift.json", "The adaptor under a LoRA (demo, 8 DPM++ steps, CFG 3, clock 2)", _lora_drift)


def _lora_drift(d):
    rows = [[v["variant"], f"{v['lora_scale']:g}", "-" if v["psnr_to_full"] is None else f"{v['psnr_to_full']:.2f}",
             pct(v["colour_and_shape_as_captioned"]), pct(v["colour_and_shape_as_recoloured"])]
            for v in d["results"].values()]
    drift = ", ".join(f"{k} {v:+.2f} dB" for k, v in d["psnr_drift_db"].items())
    r = d["results"]
    lead = ", ".join(f"{r[k]['psnr_to_full'] - r[k.replace('clockwork', 'identity')]['psnr_to_full']:+.2f} dB at scale "
                     f"{r[k]['lora_scale']:g}" for k in r if r[k]["variant"] == "clockwork")
    return (f"Command: `{d['command']}`; {d['images']} single-shape held-out captions; the LoRA: {d['lora']} "
            "(demo/train_lora.py: every colour word draws another colour). PSNR to the full model under the same "
            "LoRA set; colour+shape scored against the caption's colours and against the LoRA's.\n\n"
            + table(["variant", "LoRA scale", "PSNR to full (dB)", "colour+shape (caption)", "colour+shape (LoRA)"],
                    rows)
            + f"\n\nDrift (PSNR to full under the LoRA less without it): {drift}. The shipped adaptor's lead "
            f"over the identity adaptor: {lead}.\n")


def section_sd3_peers():
    return _transformer_peers(
        "sd3", SD3_STEPS, SD3_CACHES, "SD3 demo: clockwork against diffusers' caches (one run per step count)",
        "demo-sd3 (StableDiffusion3Pipeline layout, flow-match Euler, CFG 3, 64x64) with "
        "`benches/bench_sd3_peers.py`. Peers: diffusers' own caches on its transformer, driven as a CacheMixin "
        "pipeline drives them (eval/diffusers_caches.py): `mag_t<threshold>` MagCache (calibrated for the step "
        "count), `taylorseer_i<interval>`, `pab_r<block skip range>` PyramidAttentionBroadcast, "
        "`faster_r<block skip range>` FasterCache. Clockwork: `identity_*` reuses the middle joint "
        "blocks' stale output on its adaptor steps (the first and last block always run; `_cut2`: the first and "
        "last two; `_cut0`: none, the whole stack's residual is reused, a skipped step as MagCache's), "
        "`clockwork_*` runs the learned token-wise adaptor there instead, at the cut it was fitted at; "
        "`c<N>`: every N-th step, "
        "`dense<k>`: two steps of every three (k adaptor steps; full at 0, 3, 6, ...); `clock_sd3_learned_<steps>_b<k>`: "
        "the learned adaptor on the k adaptor steps `clockwork search-clock` chose (their table below; "
        "`clock_sd3_identity_cut0_<steps>_b<k>`: the identity adaptor at cut 0 on its searched clock; "
        "`learned_on_sd3_identity_cut0_<steps>_b<k>`: the adaptor fitted at cut 0 for the step count on that "
        "same clock). Each "
        "latency round times every variant back to back, starting one variant later each round.\n",
        " (its hook subtracts the last joint block's text stream, which SD3's last block does not return)")


def section_flux_peers():
    return _transformer_peers(
        "flux", FLUX_STEPS, FLUX_CACHES, "Flux demo: clockwork against diffusers' caches (one run per step count)",
        "demo-flux (FluxPipeline layout: 2 double-stream and 4 single-stream blocks, guidance-distilled from "
        "demo-sd3, guidance 3 embedded: one model call a step, 64x64) with `benches/bench_sd3_peers.py --model "
        "demo-flux`. Peers as on SD3, and `first_block_t<threshold>` FirstBlockCache, which runs on Flux. "
        "Clockwork: `identity_*` reuses the middle blocks' stale output (the first and last block of the stack "
        "always run; `_cut2`: two at each end), `clockwork_*` the learned token-wise adaptor; clocks as on SD3.\n",
        "")


def _transformer_peers(prefix: str, steps: tuple, caches: tuple, title: str, intro: str, not_run_why: str) -> str:
    out = [f"## {title}\n", intro]
    found = False
    for n in steps:
        name = f"{prefix}_peers_{n}.json"
        d = load(name)
        if not d:
            continue
        found = True
        out.append(section_quality(name, f"{n} steps").replace("## ", "### "))
        not_run = "; ".join(f"`{k}`: {v}" for k, v in d["not_run"].items())
        cut = f" (cut {d['adaptor_cut']})" if d.get("adaptor_cut") is not None else ""
        out.append(f"Adaptor: {d['adaptor'] or 'none'}{cut}."
                   + (f" Not run: {not_run}{not_run_why}." if not_run else "") + "\n")
        out.append(_versus_deepcache(d, caches))
        out.append(_learned_vs_identity(d))
        if d.get("clocks"):
            out.append(_clock_schedules(d))
    if not found:
        out.append(missing(f"{prefix}_peers_{steps[0]}.json"))
    return "\n".join(out)


def _learned_vs_identity(d) -> str:
    """The learned adaptor against the identity adaptor on one clock each row (both at the learned
    one's cut 0): clocks 2 and 3, and the identity's searched clocks (bench_sd3_peers.py --learned-on)."""
    vs = d["variants"]
    pairs = [(f"every {k}", f"identity_c{k}_cut0", f"clockwork_c{k}") for k in (2, 3) if d.get("adaptor_cut") == 0]
    pairs += [(f"`{v.removeprefix('learned_on_')}`", "clock_" + v.removeprefix("learned_on_"), v)
              for v in d.get("learned_on", {})]
    rows = [[clock, sum(kind.endswith("adaptor") for kind in vs[ident]["schedule"]),
             f"{vs[ident]['latency_ratio']:.2f}x", f"{vs[ident]['psnr_to_reference']:.2f}",
             f"{vs[ours]['latency_ratio']:.2f}x", f"{vs[ours]['psnr_to_reference']:.2f}",
             f"{vs[ours]['psnr_to_reference'] - vs[ident]['psnr_to_reference']:+.2f}"]
            for clock, ident, ours in pairs if ident in vs and ours in vs]
    if not rows:
        return ""
    return ("Learned against identity adaptor at cut 0, one clock a row (speed-up over stock diffusers, PSNR to "
            "it in dB):\n\n" + table(["clock", "adaptor steps", "identity", "PSNR", "learned", "PSNR", "lead (dB)"],
                                       rows) + "\n")


def _headline_row(row: list) -> bool:
    """The summary keeps one row per cache setting: the fastest that meets it, or the closest."""
    return "meets" not in str(row[-1]) or "the fastest" in str(row[-1])


def _flux_met() -> str:
    """' demo-flux ...: meets a / A, ... settings at n / ... steps', where its runs are."""
    counts = {}
    for n in FLUX_STEPS:
        d = load(f"flux_peers_{n}.json")
        if d:
            verdicts: dict[str, bool] = {}
            for r in _versus_rows(d, FLUX_CACHES):
                verdicts[r[0]] = verdicts.get(r[0], False) or "meets" in str(r[-1])
            counts[n] = f"{sum(verdicts.values())} of {len(verdicts)}"
    if not counts:
        return ""
    said = [f"{c} settings at {n} steps" if k == 0 else f"{c} at {n}" for k, (n, c) in enumerate(counts.items())]
    return (" On demo-flux (Flux layout, guidance-distilled; FirstBlockCache among the peers) clockwork meets "
            f"{', '.join(said)} (its tables: the page below).")


def headline_sd3_peers() -> str:
    """One row per cache setting, one column per step count: which clockwork configuration
    meets it, or the closest and what it misses by (speed-ups over stock diffusers)."""
    title = "Clockwork against diffusers' caches (SD3-layout demo, flow-match Euler, CFG 3)"
    cells: dict[str, dict[int, str]] = {}
    runs = [n for n in SD3_STEPS if load(f"sd3_peers_{n}.json")]
    for n in runs:
        for r in _versus_rows(load(f"sd3_peers_{n}.json"), SD3_CACHES):
            if _headline_row(r):
                verdict = "meets all three" if "meets" in str(r[-1]) else r[-1]
                cells.setdefault(r[0], {})[n] = f"{r[4]} {r[5]} vs {r[1]}: {verdict}"
    if not cells:
        return _not_measured(title, "peers-sd3", "sd3_peers_8.json")
    body = ("Per diffusers cache setting and step count, the fastest clockwork configuration that meets it (as fast by paired time ratio, colour+shape within one "
            "SE, PSNR to stock diffusers at least the cache's), else the closest and what it misses by; speed-ups "
            f"(clockwork's vs the cache's) over stock diffusers. FirstBlockCache does not run on SD3.{_flux_met()}\n\n"
            + table(["diffusers cache", *(f"{n} steps" for n in runs)],
                    [[k, *(v.get(n, "-") for n in runs)] for k, v in cells.items()]))
    return f"## {title}\n\n{body}\n\nCommands, every configuration and the images: {_link('peers-sd3')}.\n"


# The per-topic pages: (file under docs/results/, title, what it holds, its sections as (the JSON
# that decides which demo UNet a section was measured on (None: no demo UNet involved), the
# function rendering it)). Within a page, sections measured on the earlier demo UNet come last.
PAGES = [
    ("gpu", "GPU check: the CUDA path on a GPU",
     "The CUDA backend, its kernels and the GPU tests, run by `bash benches/gpu/check.sh` on a GPU "
     "(benches/gpu/README.md); the section names the GPU and its software.",
     [(None, section_gpu)]),
    ("peers", "Against the peers: stock diffusers and DeepCache",
     "The demo pipeline at 4, 8, 20 and 50 steps: clockwork (learned and identity adaptors, searched clocks, "
     "the paper's cut and DeepCache's), DeepCache and the students against stock diffusers, in one run a step "
     "count; and SD v1.5's architecture end to end.",
     [("e2e_8.json", section_e2e)]),
    ("peers-sd3", "Against the peers on SD3 and Flux: diffusers' caches",
     "The SD3-layout demo at 8, 20 and 28 steps and the Flux-layout demo at 4, 8 and 28: clockwork (identity and "
     "learned token-wise adaptors) against stock diffusers and diffusers' own caches on its transformer, in one "
     "run a step count.",
     [(None, section_sd3_peers), (None, section_flux_peers)]),
    ("clockwork", "Clockwork: the adaptor's quality and its ablations",
     "Why clockwork works, and what each choice of the adaptor's recipe (loss, training data, width, inputs, "
     "steps, scheduler) costs in alignment, PSNR and time at 8 (and 4) steps.",
     [("perturbation.json", section_perturbation), ("lora_drift.json", section_lora_drift),
      _quality_section(
          "quality_clockwork_shipped.json", "Clockwork quality: the shipped adaptor and the ablations (CFG 3)",
          "`clockwork` is the shipped adaptor: rollout (fitted on the clockwork sampler's own trajectories, the "
          "teacher's L gives the target), guided loss, conditioned on the mean-pooled text embedding too, 24 "
          "epochs of 256 captions with 8 optimizer passes over each epoch's trajectories. The ablation adaptors: "
          "the same loss, text input and passes, 12 epochs, on the clock's steps; `clockwork_unrolled_training` "
          "on the teacher's trajectories, `clockwork_noised_training` on forward-noised data latents, "
          "`adaptor_without_r_out` (rollout) without r_out(t+1) as input. `clockwork_steps_*` run the shipped "
          "adaptor on other 0-based step sets (the paper's {5..8} and {3..6} are {4..7} and {2..5})."),
      _quality_section(
          "quality_clockwork_ddim.json", "Clockwork ablation: DDIM instead of DPM++ (8 steps)",
          "The adaptor: fitted on DDIM rollouts, otherwise the ablation recipe (guided loss, pooled text, 8 "
          "passes, 12 epochs, on the clock's steps)."),
      _quality_section(
          "quality_clockwork_euler_a.json", "Clockwork under Euler a (8 steps, CFG 3)",
          "Every variant samples with Euler a (ancestral: fresh noise every step, the same noise for every "
          "variant). `clockwork` is the adaptor in benches/adaptors/euler-a/, fitted under Euler a with the "
          "shipped adaptor's recipe (rollout, guided loss, pooled text, 24 epochs of 256 captions, 8 passes, on "
          "the clock's steps); `identity_adaptor` reuses r_out unchanged."),
      _quality_section(
          "quality_clockwork_4.json", "Clockwork ablation: 4 steps, unrolled vs noised training",
          "Both adaptors: guided loss, pooled text, on the clock's steps, 12 epochs of 256 captions, 8 optimizer "
          "passes over each epoch's teacher trajectories (`clockwork`, unrolled) or forward-noised data latents "
          "(`clockwork_noised_training`)."),
      _quality_section(
          "quality_clockwork.json", "Clockwork ablations on the demo pipeline (CFG 3, the unrolled recipe)",
          "`clockwork` is the adaptor of the unrolled recipe. Every adaptor: 12 epochs of 256 captions, guided "
          "loss; `unrolled` on the teacher's trajectories, `rollout` on the clockwork sampler's own "
          "(the teacher's L gives the target), `noised` on forward-noised data latents. The step "
          "sets are 0-based (the paper's {5..8} and {3..6} are {4..7} and {2..5})."),
      _quality_section(
          "quality_clockwork_gl.json", "Adaptor loss: guided mix vs plain L2 (CFG 3)",
          "Same recipe and trajectories, only the loss differs: `clockwork` guided, "
          "`clockwork_plain_loss` the plain-loss adaptor."),
      _quality_section(
          "quality_clockwork_rollout.json", "Adaptor training data: rollout vs unrolled (CFG 3)",
          "Both with the guided loss; `clockwork` is fitted on rollouts (on its clock's steps), "
          "`clockwork_unrolled` on the teacher's trajectories (every step)."),
      _quality_section(
          "quality_clockwork_wide.json", "Adaptor width: 192 vs 96 hidden channels (CFG 3)",
          "`clockwork` is 192 channels wide (1.79M parameters, rollout, guided loss), "
          "`clockwork_hidden_96` the unrolled recipe's (0.56M); `adaptor_without_r_out` in this table is the "
          "plain-loss one."),
      _quality_section(
          "quality_clockwork_g5.json", "Clockwork quality at CFG 5 (over-guided for this model)",
          PLAIN_LOSS + " Adaptor refitted at CFG 5. The bench's default guidance scale was then 5 (the "
          "model's recommended 3 now): add `--guidance 5` to the command to repeat it.")]),
    ("schedulers", "Schedulers: parity with diffusers and the sampling loop's cost",
     "Every scheduler the engine runs, against diffusers' own pipeline on the demo: the final latents' "
     "difference, and the time of the loop with and without the model.",
     [("schedulers_demo.json", section_schedulers)]),
    ("flops", "FLOPs: what clockwork removes",
     "FLOPs per image of the full model and of clockwork (torch.utils.flop_counter on meta tensors), for the "
     "demo UNet and the SD v1.5 and SDXL architectures, at the paper's cut and at cut 0, and the SD3.5 and "
     "Flux transformers with the identity and a learned token adaptor.",
     [("flops_demo.json", section_flops)]),
    ("latency", "Latency on a 2-core x86 CPU",
     "Where the time of a clockwork request goes on the demo, SD v1.5, SDXL and SD3.5 medium (random weights), "
     "eager and compiled; and the engine's own overhead per step.",
     [("latency_demo.json", section_latency), ("latency_sdxl.json", section_sdxl_latency),
      ("latency_sd35_medium.json", section_sd35_latency),
      ("overhead_demo.json", section_overhead)]),
    ("students", "Distilled students, the tiny decoder and the compiled backend",
     "Guidance and progressive distillation (Meng et al.), the tiny VAE decoder, the bfloat16 text encoder "
     "and the inductor backend on the demo: alignment, PSNR and time.",
     [_quality_section("quality_distill.json", "Guidance and progressive distillation (demo, CFG 3)", DISTILL_NOTE),
      ("progressive_rounds.json", section_progressive_data),
      ("tiny_decoder.json", section_tiny_decoder),
      ("inductor.json", section_inductor),
      ("alignment_inductor.json", section_alignment_inductor),
      ("alignment_1200.json", section_alignment_1200),
      ("progressive2_rounds.json", section_progressive_rounds),
      _quality_section("quality_distill_g3.json", "The first students at CFG 3 (for comparison)",
                       "The first students (guidance distillation 600 steps at w ~ U[2, 8]) at CFG 3.")]),
    ("editing", "Editing and control: image-to-image, inpainting, ControlNet",
     "Recolouring by image-to-image and adding a shape by inpainting on the demo, against diffusers' "
     "Img2Img and Inpaint pipelines; the demo's mask ControlNet under full mode and clockwork.",
     [("edit_demo.json", section_edit), ("controlnet_demo.json", section_controlnet_demo)]),
    ("reuse", "Attention-map reuse",
     "Attention probabilities computed at one step reused at later steps (Hunter et al.), against running "
     "fewer steps, on the demo at 20 steps.",
     [_quality_section("quality_reuse.json", "Attention-map reuse vs fewer steps (demo, 20 steps)",
                       "At CFG 5 (`--guidance 5`); the greedy schedule (reuse_greedy_k4.json, "
                       "`clockwork search-reuse`) was searched at CFG 5 on the earlier demo UNet."),
      (None, section_sd3_attention)]),
    ("serving", "Serving: throughput, latency and memory under load",
     "`clockwork serve` over HTTP on the demo: serialized, request-level and step-level continuous batching "
     "at saturation and under open-loop arrivals; resident memory over many requests.",
     [("serve_demo.json", section_serve), ("soak_demo.json", section_soak)]),
    ("kernels", "Kernels: the fused GroupNorm + shift + SiLU",
     "The fused op's eager reference, C++ extension and compiled versions (pytest-benchmark).",
     [(None, section_kernels)]),
    ("demo", "The demo model's quality",
     "How well the demo model follows its captions (held-out captions, a shapes classifier), by guidance "
     "scale and step count.",
     [("alignment_demo.json", section_alignment), ("alignment_guidance_sweep.json", section_guidance_sweep)]),
]
PAGE_TITLES = {slug: title for slug, title, _, _ in PAGES}
CPU = ("a 2-core x86 CPU (torch 2.13.0 CPU build, diffusers 0.42.1, Python 3.11)")
NOTES = ("Timings are on " + CPU + " unless a section names the GPU. Adaptors are fitted with the guided "
         "loss (the uncond rows and the guided mix u + w(c - u)); sections whose adaptors were fitted with the "
         "plain L2 loss say so. Latencies are timed with a new prompt per call (text encoding included); "
         "sections timed otherwise say so. The latency benches keep every call's time and report paired "
         "speed-ups too (the median of per-round ratios).")


def page(slug, title, what, sections) -> str:
    """One topic page: its sections on the committed demo UNet, then those on the earlier one."""
    head = (f"# {title}\n\n{what}\n\nGenerated by `python docs/make_results.py` from benches/results/*.json; "
            f"the summary of every topic is [results.md](../results.md). "
            + ("The check's dry run and its CPU tests run on " + CPU + "." if slug == "gpu" else NOTES) + "\n")
    current, earlier = [], []
    for name, text in sections:
        if earlier_unet(name):
            title_line, _, rest = text().partition("\n\n")
            earlier.append(f"{title_line}\n\n{EARLIER_UNET}\n{rest}")
        else:
            current.append(text())
    return "\n".join([head, *current, *earlier])


# ---------------------------------------------------------------- the one-page summary


def _link(slug) -> str:
    return f"[{slug}.md](results/{slug}.md)"


def _headline(title, slug, commands, body) -> str:
    """A summary section: its table, the command(s) that produced it and the page with the details."""
    commands = [c for c in commands if c]
    said = ("Command: " if len(commands) == 1 else "Commands: ") + "; ".join(f"`{c}`" for c in commands)
    return f"## {title}\n\n{body}\n\n{said}. Details: {_link(slug)}.\n"


def _not_measured(title, slug, name) -> str:
    return f"## {title}\n\n{missing(name)}\nDetails: {_link(slug)}.\n"


GPU_HEADLINE_PHASES = {"sd15": "SD v1.5, 512x512", "sdxl": "SDXL base, 1024x1024",
                       "sd15_compile": "SD v1.5, 512x512 (the torch.compile run)", "batch4": "SD v1.5, batch 4"}


def headline_gpu() -> str:
    d = load("gpu_check.json")
    title = "GPU check (the CUDA path on a GPU)"  # the anchor benches/gpu/README.md links to
    if d is None or d.get("dry_run"):
        why = "benches/results/gpu_check.json is missing" if d is None else \
            "benches/results/gpu_check.json is a dry run's (CPU, tiny models)"
        return f"## {title}\n\n_Not run on a GPU: {why}._ Details: {_link('gpu')}.\n"
    legacy, rows = _legacy_gpu(d), []
    for phase, label in GPU_HEADLINE_PHASES.items():
        p = d["phases"].get(phase, {})
        if p.get("status") != "ok" or "timings" not in p:
            continue
        for name, t in p["timings"].items():
            rows.append([label, GPU_VARIANTS.get(name, name), _compiled(name, p, legacy),
                         f"{t['median_s'] * 1e3:.1f}", _ratio(p, "speedup_vs_diffusers", "diffusers", name),
                         f"{_first_call(p, name):.2f}"])
    dev = d["device"]
    body = (f"One {dev.get('gpu')} (torch {dev['torch']}, triton {dev['triton']}, diffusers {dev['diffusers']}); "
            "random weights, fp16, 8 DPM++ steps, CFG 7.5, batch 1. Speed-ups: the median of "
            "per-round ratios of interleaved calls; first call: where compiling and capturing happen.\n\n"
            + table(["model", "variant", "compiled", "median ms", "vs stock diffusers (paired)", "first call s"],
                    rows))
    return _headline(title, "gpu", ["bash benches/gpu/check.sh"], body)


def headline_peers() -> str:
    title = "Clockwork against DeepCache (demo, DPM++, CFG 3)"
    rows = []
    for n in (8, 20, 50):
        d = load(f"e2e_{n}.json")
        if d and _has_versus(d):
            rows += [[n, *r] for r in _versus_rows(d) if _headline_row(r)]
    if not rows:
        return _not_measured(title, "peers", "e2e_8.json")
    body = ("Per DeepCache setting (interval N), the clockwork configurations that meet it: as fast (time ratio: "
            "DeepCache's time over clockwork's, paired by round, ± one SE), colour+shape within one SE, PSNR to "
            "stock diffusers at least DeepCache's. `cut0_deepcache_clock_i<N>`: the identity adaptor at cut 0 on "
            "DeepCache's clock (DeepCache's images); `clock_*`: searched clocks.\n\n"
            + table(["steps", *VERSUS_HEADER], rows))
    return f"## {title}\n\n{body}\n\nCommands and every configuration that meets each setting: {_link('peers')}.\n"


def headline_clockwork() -> str:
    title = "Clockwork's shipped adaptor (demo, 8 DPM++ steps, CFG 3, clock 2)"
    d = load("quality_clockwork_shipped.json")
    if not d:
        return _not_measured(title, "clockwork", "quality_clockwork_shipped.json")
    rows = [[k, pct(v["single_colour_and_shape"]), pct(v["pair_all"]), f"{v['psnr_to_reference']:.2f}",
             _latency_ms(v), f"{v['latency_ratio']:.2f}x"]
            for k, v in d["variants"].items() if k in ("full", "clockwork", "identity_adaptor")]
    body = (f"{d['images']} images over {d['unique_captions']} held-out captions; PSNR and speed-up against "
            f"`{d['reference']}`, the engine's full mode.\n\n"
            + table(["variant", "single: colour+shape", "pairs: all", f"PSNR to {d['reference']} (dB)",
                     "latency ms [p25-p75]", "speed-up"], rows))
    return _headline(title, "clockwork", [d["command"]], body)


def headline_schedulers() -> str:
    title = "Schedulers: parity with diffusers"
    d = load("schedulers_demo.json")
    if not d:
        return _not_measured(title, "schedulers", "schedulers_demo.json")
    worst = max(v for r in d["rows"] for v in r["max_abs_diff"].values())
    floor = max(r["float32_floor"] for r in d["rows"])
    ratios = [r["speedup_paired"] for r in d["rows"]]
    loop = [r["loop_only_ms"]["diffusers"] / r["loop_only_ms"]["engine"] for r in d["rows"]]
    body = table(["schedulers", "worst max abs(engine - diffusers)", "largest float32 floor",
                  "end to end vs diffusers (paired)", "the loop alone, cheaper by"],
                 [[len(d["rows"]), f"{worst:.1e}", f"{floor:.1e}", f"{min(ratios):.2f}x-{max(ratios):.2f}x",
                   f"{min(loop):.1f}x-{max(loop):.1f}x"]])
    return _headline(title, "schedulers", [d["command"]], f"The demo at {d['steps']} steps, epsilon and "
                     "v-prediction, CFG off and on; the float32 floor is how far one ulp of the initial latents "
                     "moves diffusers' own result.\n\n" + body)


FLOPS_HEADLINE = (("flops_sd15.json", "SD v1.5, 512x512"), ("flops_sd15_cut0.json", "SD v1.5, 512x512, cut 0"),
                  ("flops_sdxl.json", "SDXL base, 1024x1024"), ("flops_sdxl_cut0.json", "SDXL base, 1024x1024, cut 0"),
                  ("flops_demo.json", "demo, 64x64"))
FLOPS_HEADLINE_SD3 = (("flops_sd35_medium.json", "SD3.5 medium, 1024x1024, 28 steps, identity adaptor"),
                      ("flops_sd35_large.json", "SD3.5 large, 1024x1024, 28 steps, identity adaptor"),
                      ("flops_flux_dev.json", "Flux-dev, 1024x1024, 28 steps, no CFG, identity adaptor"))


def headline_flops() -> str:
    title = "FLOPs per image (8 steps unless named, clock 2, CFG batch 2, adaptor included)"
    rows = []
    for name, label in FLOPS_HEADLINE:
        d = load(name)
        if not d:
            continue
        f = d["full"]
        rows.append([label, f"{d['adaptor_parameters'] / 1e6:.2f}M", f"{f['baseline_tflops_per_image']:.4f}",
                     f"{f['clockwork_tflops_per_image']:.4f}", pct(-f["saving"]), pct(-d["paper"]["saving"])])
    for name, label in FLOPS_HEADLINE_SD3:
        d = load(name)
        if d:
            f = d["full"]
            rows.append([label, "0", f"{f['baseline_tflops_per_image']:.1f}", f"{f['clockwork_tflops_per_image']:.1f}",
                         pct(-f["saving"]), pct(-d["paper"]["saving"])])
            if "learned_saving" in f:
                rows.append([label.replace("identity adaptor", "learned adaptor"),
                             f"{d['learned_adaptor']['parameters'] / 1e6:.1f}M",
                             f"{f['baseline_tflops_per_image']:.1f}",
                             f"{f['learned_clockwork_tflops_per_image']:.1f}", pct(-f["learned_saving"]),
                             pct(-d["paper"]["learned_saving"])])
    if not rows:
        return _not_measured(title, "flops", "flops_sd15.json")
    body = ("TFLOPs counted with the attention-score matmuls (`full`); the last column counts as the paper does "
            "(without them).\n\n" + table(["model", "adaptor", "full TFLOPs", "clockwork TFLOPs", "change",
                                           "change (paper's count)"], rows))
    # each row's own command is on the flops page; they differ only in these arguments
    return _headline(title, "flops", ["clockwork flops --arch ARCH --steps STEPS --clock 2 [--cut 0]"], body)


def headline_latency() -> str:
    title = "Latency on a 2-core x86 CPU"
    d, x = load("latency_demo.json"), load("latency_sdxl.json")
    if not d:
        return _not_measured(title, "latency", "latency_demo.json")
    p = d.get("parts_ms", {})
    rows = [["demo, 8 steps: clockwork vs full, end to end", f"{d['speedup_end_to_end']:.2f}x"],
            ["demo, 8 steps: clockwork vs full, sampling only", f"{d['speedup_sampling_only']:.2f}x"]]
    if "speedup_end_to_end_inductor" in d:
        rows.append(["demo, 8 steps, inductor backend: clockwork vs full, end to end",
                     f"{d['speedup_end_to_end_inductor']:.2f}x"])
    if p:
        rows.append(["demo: an adaptor step over a full step", f"{p['adaptor_over_full_step']:.2f}"])
    commands = [d["command"]]
    if x:
        rows.append(["SDXL base, 512x512, random weights: an adaptor step over a full step",
                     f"{x['adaptor_step_over_full_step']:.3f}"])
        e = x.get("end_to_end")
        if e:
            rows.append([f"SDXL base, {e['size']}x{e['size']}, {e['steps']} steps: clockwork vs full, end to end "
                         f"({'one call each' if e['repeats'] == 1 else str(e['repeats']) + ' repeats'})",
                         f"{e['speedup']:.2f}x"])
        commands += [x["command"], e["command"] if e else None]
    m = load("latency_sd35_medium.json")
    if m:
        rows.append(["SD3.5 medium, 512x512, random weights: an identity-adaptor step over a full step",
                     f"{m['identity_step_over_full_step']:.3f}"])
        e = m.get("end_to_end")
        if e:
            rows.append([f"SD3.5 medium, {e['size']}x{e['size']}, {e['steps']} steps: clockwork (identity) vs full, "
                         "latents out", f"{e['speedup']:.2f}x"])
        commands.append(m["command"])
    body = "Ratios of medians of interleaved repeats.\n\n" + table(["what", "figure"], rows)
    return _headline(title, "latency", commands, body)


STUDENT_HEADLINE = ("teacher_8_cfg", "teacher_8_clockwork", "guided-8_8_steps", "guided-8_8_steps+clockwork",
                    "progressive-4_4_steps", "progressive-2_2_steps", "progressive-2_2_steps+tiny_decoder+bf16_text")


def headline_students() -> str:
    title = "Students, tiny decoder and the compiled backend (demo, CFG 3)"
    d = load("inductor.json")
    if not d:
        return _not_measured(title, "students", "inductor.json")
    quality = (load("quality_distill.json") or {}).get("variants", {})
    vs, rows = d["variants"], []
    for name in (d["reference"], *STUDENT_HEADLINE):
        v, c = vs.get(name), vs.get(name + "@inductor")
        if v is None:
            continue
        rows.append([name, f"{v['latency_s'] * 1e3:.1f}", f"{v['speedup_vs_diffusers']:.2f}x",
                     "-" if c is None else f"{c['latency_s'] * 1e3:.1f}",
                     "-" if c is None else f"{c['speedup_vs_diffusers']:.2f}x",
                     pct(quality.get(name, {}).get("single_colour_and_shape"))])
    body = (f"Batch 1, a new prompt per call; speed-ups against `{d['reference']}` (ratio of medians). Inductor: "
            "compiled step programs, text encoder and decoder. Colour+shape: the eager variant's "
            "(quality_distill.json). Every variant: the students page.\n\n"
            + table(["variant", "eager ms", "vs diffusers", "inductor ms", "vs diffusers", "colour+shape"], rows))
    return _headline(title, "students", [d["command"]], body)


def headline_editing() -> str:
    title = "Editing: image-to-image and inpainting (demo, 8 steps, CFG 3)"
    d = load("edit_demo.json")
    if not d:
        return _not_measured(title, "editing", "edit_demo.json")
    rows = []
    for task, v in d["tasks"].items():
        stock, cw = v["diffusers"], v["clockwork"]
        rows.append([task, pct(stock["edit_accuracy"]), pct(v["engine_full"]["edit_accuracy"]),
                     pct(cw["edit_accuracy"]), f"{cw['speedup']:.2f}x"])
    body = (f"{d['images']} inputs a task; `recolour@s`: image-to-image at strength s; speed-up against "
            "stock diffusers' pipeline.\n\n"
            + table(["task", "edit accuracy: diffusers", "engine, full", "clockwork", "clockwork's speed-up"], rows))
    return _headline(title, "editing", [d["command"]], body)


def headline_reuse() -> str:
    title = "Attention-map reuse vs fewer steps (demo, 20 steps, CFG 5)"
    d = load("quality_reuse.json")
    if not d:
        return _not_measured(title, "reuse", "quality_reuse.json")
    rows = [[k, pct(v["single_colour_and_shape"]), f"{v['psnr_to_reference']:.2f}", f"{v['latency_ratio']:.2f}x"]
            for k, v in d["variants"].items()]
    body = table(["variant", "colour+shape", f"PSNR to {d['reference']} (dB)", "speed-up"], rows)
    return _headline(title, "reuse", [d["command"]], body)


def headline_serving() -> str:
    title = "Serving over HTTP (demo, clockwork, 8 steps, CFG)"
    d = load("serve_demo.json")
    if not d:
        return _not_measured(title, "serving", "serve_demo.json")
    labels = {"off": "serialized", "request": "request-level batching", "step": "step-level continuous batching"}
    base = d["phases"]["off"]["saturation"]["throughput_rps"]
    rows = []
    for mode, phase in d["phases"].items():
        sat = phase["saturation"]
        at = next((r for r in phase["rates"] if abs(r["rate_rps"] / d["serialized_capacity_rps"] - 1.5) < 0.05), None)
        rows.append([labels[mode], f"{sat['throughput_rps']:.2f}", f"{sat['throughput_rps'] / base:.2f}x",
                     _s(sat["p99_s"]), "-" if at is None else _s(at["p99_s"]),
                     "-" if at is None else at["lost"]])
    body = ("At saturation (32 requests in flight), and under Poisson arrivals at 1.5x the serialized "
            f"capacity ({d['serialized_capacity_rps']:.2f} requests/s).\n\n"
            + table(["batching", "images/s at saturation", "vs serialized", "p99 s at saturation",
                     "p99 s at 1.5x capacity", "lost at 1.5x"], rows))
    return _headline(title, "serving", [d["command"]], body)


def headline_kernels() -> str:
    title = "Kernels: fused GroupNorm + shift + SiLU (CPU)"
    d = load("kernels.json")
    if not d:
        return _not_measured(title, "kernels", "kernels.json")
    shapes: dict[str, dict[str, float]] = {}
    for b in d["benchmarks"]:
        shape, _, kind = b["name"].partition("[")[2].rstrip("]").rpartition("-")
        shapes.setdefault(shape, {})[kind] = b["stats"]["median"] * 1e3
    kinds = sorted({k for v in shapes.values() for k in v})
    rows = [[s, *(f"{v[k]:.3f}" if k in v else "-" for k in kinds)] for s, v in shapes.items()
            if s.startswith("sd-")]
    body = "Median ms at SD v1.5's shapes (the demo's: the kernels page).\n\n" + table(["shape", *kinds], rows)
    return _headline(title, "kernels", ["python -m pytest benches/bench_kernels.py --benchmark-json "
                                        "benches/results/kernels.json"], body)


HEADLINES = (headline_gpu, headline_peers, headline_sd3_peers, headline_clockwork, headline_schedulers, headline_flops,
             headline_latency, headline_students, headline_editing, headline_reuse, headline_serving, headline_kernels)


def summary() -> str:
    intro = ("# Results\n\nThe headline tables, each with the command that produced it and the page with the "
             "details, all generated by `python docs/make_results.py` from benches/results/*.json. Timings are on "
             f"{CPU} unless a section names the GPU. The demo's alignment is scored by a shapes classifier on "
             "held-out captions; real architectures are measured with random weights, which is honest for FLOPs, "
             "latency and parity, never for image quality; the demo model's own alignment, by guidance scale "
             f"and step count, is on {_link('demo')}.\n")
    return "\n".join([intro, *(h() for h in HEADLINES)])


def main():
    folder = os.path.join(ROOT, "docs", "results")
    os.makedirs(folder, exist_ok=True)
    written = {f"{slug}.md" for slug, _, _, _ in PAGES}
    for name in os.listdir(folder):  # a page no longer generated
        if name.endswith(".md") and name not in written:
            os.remove(os.path.join(folder, name))
    for slug, title, what, sections in PAGES:
        with open(os.path.join(folder, f"{slug}.md"), "w") as f:
            f.write(wrap(page(slug, title, what, sections)).rstrip("\n") + "\n")
    with open(os.path.join(ROOT, "docs", "results.md"), "w") as f:
        f.write(wrap(summary()).rstrip("\n") + "\n")
    print(f"wrote docs/results.md and docs/results/ ({len(PAGES)} pages)")


if __name__ == "__main__":
    main()
