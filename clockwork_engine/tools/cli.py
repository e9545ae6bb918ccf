"""The `clockwork` command line."""

from __future__ import annotations

import argparse
import logging
import sys


def _generate(args) -> int:
    return _run(args, edit=None)


def _edit(args) -> int:
    from PIL import Image, UnidentifiedImageError

    def read(path, what):
        try:
            with Image.open(path) as im:
                im.load()
                return im
        except (OSError, UnidentifiedImageError) as e:
            raise ValueError(f"{what} {path!r} is not a readable image: {e}") from e

    edit = {"image": read(args.input, "input"), "strength": args.strength}
    if args.mask:
        edit["mask_image"] = read(args.mask, "mask")
    return _run(args, edit)


def _run(args, edit) -> int:
    from tqdm import tqdm

    from clockwork_engine import Engine
    from clockwork_engine.clockwork import clock_search
    from clockwork_engine.reuse import search as reuse_search

    config = Engine.default_config(args.model, args.preset)
    if args.clock_schedule:  # clockwork on its clock, at its step count
        config = clock_search.with_schedule(config, args.clock_schedule)
        if args.steps is not None and args.steps != config.steps:
            raise ValueError(f"--clock-schedule {args.clock_schedule} is a clock for {config.steps} steps, "
                             f"not --steps {args.steps}")
    if args.mode:
        config = config.with_(mode=args.mode)
    if args.decoder:
        config = config.with_(decoder=args.decoder)
    if args.text_dtype:
        config = config.with_(text_dtype=args.text_dtype)
    if args.scheduler:
        config = config.with_(scheduler=args.scheduler)
    if args.eta is not None:
        config = config.with_(eta=args.eta)
    steps = config.steps if args.steps is None else args.steps
    config = config.with_(steps=steps)  # the adaptor fitted for these steps, where the model has several
    engine = Engine.from_pretrained(args.model, config=config, preset=args.preset)
    evals = engine.step_kinds(steps, "full")  # one entry a model evaluation (Heun: about two a step)
    if args.reuse_schedule:
        spec = args.reuse_schedule
        reuse = reuse_search.late(int(spec[5:]), len(evals)) if spec.startswith("late:") else reuse_search.load(spec)
        engine = engine.with_config(attention_reuse=reuse)
    bar = tqdm(total=len(evals), desc="sampling", unit="step", disable=args.quiet)

    def progress(i, n, latents):
        bar.total = n  # an edit runs the evaluations its strength leaves
        bar.update(1)

    size = {} if edit else {"height": args.height, "width": args.width}
    image = engine.generate(args.prompt, steps=steps, guidance_scale=args.guidance, seed=args.seed,
                            callback=progress, **size, **(edit or {}))
    bar.close()
    image.save(args.output)
    if not args.quiet:
        print(f"wrote {args.output} ({image.width}x{image.height}, seed {args.seed})")
    return 0


def _exit_zero(run):
    """A command whose run() returns its results (perhaps empty): success is exit status 0."""
    def command(args) -> int:
        run(args)
        return 0

    return command


def _sampling_options(gen):
    """The options generate and edit share."""
    from clockwork_engine.config import MODES, TEXT_DTYPES

    gen.add_argument("-o", "--output", default="out.png", help="output image path (default: out.png)")
    gen.add_argument("--model", default="demo",
                     help="'demo' (the embedded demo model), 'demo-sd3' / 'demo-flux' (its SD3- and Flux-layout "
                          "siblings) or a local diffusers model directory")
    gen.add_argument("--preset", default=None,
                     help="a distilled student shipped with the model (for the demo: guided-8, progressive-4, "
                          "progressive-2), run at its own settings")
    gen.add_argument("--steps", type=int, default=None,
                     help="number of sampler steps (default: the model's, 8 unless its clockwork_engine.json says so)")
    gen.add_argument("--guidance", type=float, default=None,
                     help="classifier-free guidance scale; <= 1 turns guidance off (default: the model's, 5.0 "
                          "unless its clockwork_engine.json says so)")
    gen.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same image (default: 0)")
    gen.add_argument("--mode", default=None, choices=MODES,
                     help="full (the unmodified model) or clockwork (default: clockwork when the model has an adaptor)")
    gen.add_argument("--reuse-schedule", default=None,
                     help="attention-map reuse: a schedule JSON (from search-reuse) or 'late:K' (the last K steps)")
    gen.add_argument("--clock-schedule", default=None,
                     help="clockwork: a clock schedule JSON (from search-clock): its adaptor steps, at its step count")
    gen.add_argument("--decoder", default=None, choices=("vae", "tiny"),
                     help="vae (the model's VAE decoder) or tiny (its distilled tiny decoder, "
                          "tiny_decoder/; cheaper, close to the VAE's image) (default: vae)")
    gen.add_argument("--text-dtype", default=None, choices=TEXT_DTYPES,
                     help="text encoder weights: float32 or bfloat16 (half the bytes to read; ~1%% "
                          "embedding error) (default: float32)")
    gen.add_argument("--scheduler", default=None,
                     help="sampler: a diffusers class name or a short name (ddim, pndm, euler, euler-a, heun, "
                          "dpm++2m, dpm++2m-karras, dpm++2m-sde, unipc, lcm, ...; an unknown name lists them), "
                          "built from the model's scheduler config (default: the model's own)")
    gen.add_argument("--eta", type=float, default=None, help="DDIM's eta / TCD's gamma in [0, 1] (default: 0)")
    gen.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary line")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clockwork", description="clockwork-engine: fast text-to-image on "
                                     "Stable-Diffusion-style models.")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="also show the libraries' own warnings and progress bars (transformers, diffusers)")
    sub = parser.add_subparsers(dest="command", required=True)
    _image_commands(sub)
    _tool_commands(sub)
    return parser


def _image_commands(sub):
    """generate and edit: one image from a prompt (and an input image)."""
    gen = sub.add_parser("generate", help="generate one image from a prompt",
                         description="Generate one image from a text prompt and save it as PNG.")
    gen.add_argument("prompt", help='the text prompt, e.g. "a red circle above a blue square"')
    gen.add_argument("--height", type=int, default=None, help="image height in pixels (default: the model's size)")
    gen.add_argument("--width", type=int, default=None, help="image width in pixels (default: the model's size)")
    _sampling_options(gen)
    gen.set_defaults(run=_generate)

    edit = sub.add_parser("edit", help="edit an image with a prompt (image-to-image, or inpainting with --mask)",
                          description="Image-to-image (SDEdit) or, with --mask, inpainting; saves the result as PNG. "
                                      "The output has the input's size.")
    edit.add_argument("input", help="the image to edit (PNG, JPEG, ...); its sides must suit the model")
    edit.add_argument("prompt", help="what the edited image shows")
    edit.add_argument("--strength", type=float, default=None,
                      help="how far the edit may move from the input, in (0, 1]: the share of the steps that run "
                           "(default: 0.8; 1 with --mask)")
    edit.add_argument("--mask", default=None, help="a black-and-white mask of the input's size: white is repainted")
    _sampling_options(edit)
    edit.set_defaults(run=_edit)


def _tool_commands(sub):
    """distillation, measurement, search, serving and build commands: each a module's parser."""
    from clockwork_engine.distill import fit_adaptor as distill_adaptor

    distill = sub.add_parser("distill", help="train a clockwork adaptor on the teacher's trajectories",
                             description=distill_adaptor.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    distill_adaptor.build_parser(distill)
    distill.set_defaults(run=_exit_zero(distill_adaptor.run))

    from clockwork_engine.distill import decoder as distill_decoder
    from clockwork_engine.distill import guidance as distill_guidance
    from clockwork_engine.distill import progressive as distill_progressive

    for name, module, text in (
            ("distill-guidance", distill_guidance, "stage 1: a w-conditioned student (no CFG batch)"),
            ("distill-progressive", distill_progressive, "stage 2: halve the student's steps"),
            ("distill-decoder", distill_decoder, "a tiny decoder in place of the VAE decoder")):
        p = sub.add_parser(name, help=text, description=module.__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        module.build_parser(p)
        p.set_defaults(run=module.run)

    from clockwork_engine.reuse import search as reuse_search
    from clockwork_engine.serving import server
    from clockwork_engine.tools import bench, compile_command, flops, import_graph, profile, search_clock

    for name, module, text in (
            ("flops", flops, "count FLOPs per step type (full vs clockwork)"),
            ("bench", bench, "your model: the engine's variants against stock diffusers, in one run"),
            ("profile", profile, "write a torch.profiler trace and a per-step table"),
            ("search-reuse", reuse_search, "greedy search of an attention-reuse schedule"),
            ("search-clock", search_clock, "greedy search of a clockwork clock (which steps run the adaptor)"),
            ("serve", server, "the HTTP API (OpenAI images API, /healthz, /metrics) with batching"),
            ("compile", compile_command, "compile a model's step programs for its sizes and save them for fast starts"),
            ("imports", import_graph, "the package's import graph in layers (and any cycle)")):
        p = sub.add_parser(name, help=text, description=module.__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        module.build_parser(p)
        p.set_defaults(run=_exit_zero(module.run))


def _quiet_libraries():
    """The normal path prints the engine's own lines only: the libraries' loading bars and
    advisory warnings go (clockwork -v shows them); the engine's warnings stay."""
    import warnings

    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    for lib in (diffusers_logging, transformers_logging):
        lib.set_verbosity_error()
        lib.disable_progress_bar()
    warnings.filterwarnings("ignore", module=r"(diffusers|transformers|torch|huggingface_hub)(\.|$)")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if not args.verbose:
        _quiet_libraries()
    # The engine's one-line notes (e.g. components of a model directory it skips) go to stderr.
    log = logging.getLogger("clockwork_engine")
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("clockwork: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    try:
        return args.run(args)
    except (ValueError, TypeError, FileNotFoundError) as e:
        print(f"clockwork {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
