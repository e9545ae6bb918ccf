"""FLOPs per step type with torch.utils.flop_counter, on meta tensors (no weights needed).

Two counting conventions, both reported:
  paper: what Clockwork's 677.8 GFLOPs per SD v1.5 forward counts: convolutions and linear
         layers, not the attention-score matmuls (QK^T and P.V);
  full:  everything the flop counter sees with diffusers' plain AttnProcessor (those
         matmuls are baddbmm + bmm there): the honest cost.
A flop here is the counter's: 2 per multiply-add.
"""

from __future__ import annotations

import argparse
import json
import os
from collections import defaultdict

import torch
from torch.utils.flop_counter import FlopCounterMode

from clockwork_engine.tools.architectures import (  # noqa: F401  (the published configs, used from here too)
    FLUX_DEV,
    FLUX_SCHNELL,
    FLUX_TEXT_TOKENS,
    SD3_TEXT_TOKENS,
    SD15_ADAPTOR_HIDDEN,
    SD15_TEXT_TOKENS,
    SD15_UNET,
    SD35_LARGE,
    SD35_MEDIUM,
    SDXL_POOLED_DIM,
    SDXL_UNET,
)
from clockwork_engine.tools.counting import _conventions, _count, example_inputs  # noqa: F401


def per_level(unet, x, t, text, added=None) -> dict[str, dict[str, float]]:
    """GFLOPs of each top-level UNet module (both conventions), for one forward."""
    by_module: dict[str, dict[str, int]] = defaultdict(dict)
    with FlopCounterMode(display=False) as counter:
        unet(x, t, text, added_cond_kwargs=added)
    for name, ops in counter.get_flop_counts().items():
        parts = name.split(".")
        # "UNet2DConditionModel.down_blocks.0" is a top-level block; conv_in etc. have 2 parts
        if (len(parts) == 3 and parts[1] in ("down_blocks", "up_blocks")) or (
                len(parts) == 2 and parts[1] not in ("down_blocks", "up_blocks")):
            by_module[".".join(parts[1:])] = {str(k): int(v) for k, v in ops.items()}
    return {m: {c: v / 1e9 for c, v in _conventions(ops).items()} for m, ops in by_module.items()}


def build(unet_config: dict, cut: int = 1, adaptor_hidden: int | None = None, adaptor_text: bool = False):
    """(unet, split, adaptor) of an architecture with random weights, on torch's current device
    (meta for counting: no memory): the UNet from its config, the split at `cut`, the ResNet
    adaptor `adaptor_hidden` wide (None: as wide as the split's r_out; adaptor_text: it reads the
    pooled text too)."""
    from diffusers import UNet2DConditionModel

    from clockwork_engine.clockwork.adaptors import Adaptor, AdaptorConfig
    from clockwork_engine.clockwork.unet_split import UNetSplit

    unet = UNet2DConditionModel(**unet_config).eval()
    split = UNetSplit(unet, cut)
    text_embed_dim = split.text_embed_dim if adaptor_text else 0  # the pooled-text input
    adaptor = Adaptor(AdaptorConfig.for_split(split, adaptor_hidden, text_embed_dim=text_embed_dim)).eval()
    return unet, split, adaptor


def count_arch(unet_config: dict, text_tokens: int, text_dim: int, adaptor_hidden: int | None, steps: int,
               clock_every: int, cfg_batch: int = 2, cut: int = 1, latent: int | None = None,
               adaptor_text: bool = False) -> dict:
    from diffusers.models.attention_processor import AttnProcessor

    from clockwork_engine.clockwork.adaptors import num_parameters
    from clockwork_engine.clockwork.clock import Clock

    with torch.device("meta"):
        unet, split, adaptor = build(unet_config, cut, adaptor_hidden, adaptor_text)
        unet.set_attn_processor(AttnProcessor())  # plain bmm attention: every matmul is counted
        size = latent or unet_config["sample_size"]
        x, t, text, added = example_inputs(unet_config, cfg_batch, text_tokens, text_dim, latent)
        with torch.no_grad():
            full_ops = _count(lambda: split(x, t, text, None, added))
            unet_ops = _count(lambda: unet(x, t, text, added_cond_kwargs=added))

            def adaptor_step():
                hin = split.h_in(x, t, text, None, added)
                r_prev = torch.empty(cfg_batch, split.r_out_channels, *hin.r_in.shape[-2:])
                split.h_out(adaptor(hin.r_in, r_prev, hin.emb, text), hin.skips, hin.emb, text)

            def always_run():
                hin = split.h_in(x, t, text, None, added)
                r_out = torch.empty(cfg_batch, split.r_out_channels, *hin.r_in.shape[-2:])
                split.h_out(r_out, hin.skips, hin.emb, text)

            adaptor_ops = _count(adaptor_step)
            always_ops = _count(always_run)
            r = size // split.scale  # r_in / r_out side
            adaptor_only = _count(lambda: adaptor(torch.empty(cfg_batch, split.r_in_channels, r, r),
                                                  torch.empty(cfg_batch, split.r_out_channels, r, r),
                                                  torch.empty(cfg_batch, split.time_embed_dim), text))
            one = None if added is None else {k: v[:1] for k, v in added.items()}
            levels = per_level(unet, x[:1], t, text[:1], one)
    assert sum(full_ops.values()) == sum(unet_ops.values()), "the split must cost what the UNet costs"
    schedule = Clock(every=clock_every).schedule(steps)
    n_adaptor = sum(schedule)
    result = {"steps": steps, "clock_every": clock_every, "cfg_batch": cfg_batch, "cut": cut,
              "adaptor_steps_0based": [i for i, a in enumerate(schedule) if a],
              "adaptor_parameters": num_parameters(adaptor), "unet_forward_batch1_gflops_by_module": levels}
    for conv in ("paper", "full"):
        full_step = _conventions(full_ops)[conv] / 1e12
        adapt_step = _conventions(adaptor_ops)[conv] / 1e12
        baseline = steps * full_step
        clockwork = (steps - n_adaptor) * full_step + n_adaptor * adapt_step
        result[conv] = {
            "unet_forward_batch1_gflops": _conventions(full_ops)[conv] / cfg_batch / 1e9,
            "always_run_batch1_gflops": _conventions(always_ops)[conv] / cfg_batch / 1e9,
            "adaptor_batch1_gflops": _conventions(adaptor_only)[conv] / cfg_batch / 1e9,
            "full_step_tflops": full_step, "adaptor_step_tflops": adapt_step,
            "baseline_tflops_per_image": baseline, "clockwork_tflops_per_image": clockwork,
            "saving": 1 - clockwork / baseline,
        }
    result["ops_full_step"] = {k: v / 1e9 for k, v in sorted(full_ops.items())}
    return result


def _transformer_inputs(config: dict, batch: int, text_tokens: int, side: int, flux: bool):
    """(x, t, text, added) for one transformer call: [B, C, side, side] latents (Flux: its packed
    channels / 4), timestep 500, text states, pooled projections (and Flux-dev's guidance)."""
    x = torch.randn(batch, config["in_channels"] // (4 if flux else 1), side, side)
    text = torch.randn(batch, text_tokens, config["joint_attention_dim"])
    added = {"pooled_projections": torch.randn(batch, config["pooled_projection_dim"])}
    if config.get("guidance_embeds"):
        added["guidance"] = torch.full((batch,), 3.5)
    return x, torch.full((batch,), 500.0), text, added


def count_transformer(config: dict, steps: int, clock_every: int, cfg_batch: int = 2, cut: int = 1,
                      text_tokens: int = SD3_TEXT_TOKENS, adaptor_hidden: int | None = None,
                      flux: bool = False, latent: int = 128) -> dict:
    """An SD3 (or, flux=True, a Flux) transformer's full step against an adaptor step (the first
    and last `cut` blocks, the embeddings and the output layers run): the identity adaptor (the
    middle's residual reused) and the learned token-wise adaptor (adaptors.TokenAdaptor,
    adaptor_hidden wide, default half the transformer's width), at `latent`-sided latents (128:
    1024x1024)."""
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel

    from clockwork_engine.clockwork import adaptors
    from clockwork_engine.clockwork.clock import Clock
    from clockwork_engine.clockwork.transformer_split import TransformerSplit
    from clockwork_engine.models import flux as flux_family
    from clockwork_engine.models import sd3

    with torch.device("meta"):
        model = (FluxTransformer2DModel if flux else SD3Transformer2DModel)(**config).eval()
        family = flux_family.FLUX if flux else sd3.SD3
        split = TransformerSplit(model, cut)
        side = latent
        x, t, text, added = _transformer_inputs(config, cfg_batch, text_tokens, side, flux)
        learned = adaptors.build(adaptors.AdaptorConfig.for_split(split, adaptor_hidden or split.width // 2))
        denoise = family.denoiser(model)
        with torch.no_grad():
            model_ops = _count(lambda: denoise(x, t, text, None, None, added))
            full_ops = _count(lambda: split(x, t, text, None, added))

            def adaptor_step():  # the identity adaptor: r_out is the previous step's
                hin = split.h_in(x, t, text, None, added)
                split.h_out(torch.empty_like(hin.r_in), hin.skips, hin.emb, text)

            adaptor_ops = _count(adaptor_step)
            r = torch.empty(cfg_batch, split.feature_shape(1, text_tokens, side, side)[1], split.width)
            learned_ops = _count(lambda: learned(r, r, torch.empty(cfg_batch, split.time_embed_dim), text))
    # the split's residual (one subtraction and one addition) is all it adds to the model
    assert abs(sum(full_ops.values()) - sum(model_ops.values())) <= sum(model_ops.values()) * 1e-3
    schedule = Clock(every=clock_every).schedule(steps)
    n_adaptor = sum(schedule)
    result = {"steps": steps, "clock_every": clock_every, "cfg_batch": cfg_batch, "cut": cut,
                "joint_blocks": config["num_layers"] + config.get("num_single_layers", 0), "always_run_blocks": 2 * cut,
              "text_tokens": text_tokens, "image_tokens": (side // split.patch) ** 2, "adaptor": "identity",
              "adaptor_parameters": 0,
              "learned_adaptor": {"hidden": learned.config.hidden_channels,
                                  "parameters": adaptors.num_parameters(learned)},
              "adaptor_steps_0based": [i for i, a in enumerate(schedule) if a]}
    for conv in ("paper", "full"):
        full_step = _conventions(model_ops)[conv] / 1e12
        baseline = steps * full_step
        result[conv] = {"model_forward_batch1_gflops": _conventions(model_ops)[conv] / cfg_batch / 1e9,
                        "full_step_tflops": full_step, "baseline_tflops_per_image": baseline}
        for name, extra in (("", {}), ("learned_", learned_ops)):  # the learned adaptor adds its own cost
            adapt_step = (_conventions(adaptor_ops)[conv] + (_conventions(extra)[conv] if extra else 0)) / 1e12
            clockwork = (steps - n_adaptor) * full_step + n_adaptor * adapt_step
            result[conv] |= {f"{name}adaptor_step_tflops": adapt_step,
                             f"{name}adaptor_step_fraction": adapt_step / full_step,
                             f"{name}clockwork_tflops_per_image": clockwork, f"{name}saving": 1 - clockwork / baseline}
    result["ops_full_step"] = {k: v / 1e9 for k, v in sorted(model_ops.items())}
    return result


def main(argv=None, parser=None):
    ap = parser or argparse.ArgumentParser(prog="clockwork flops", description=__doc__,
                                           formatter_class=argparse.RawDescriptionHelpFormatter)
    build_parser(ap)
    return run(ap.parse_args(argv))


def build_parser(ap):
    ap.add_argument("--arch", choices=("sd15", "sdxl", "demo", "sd3.5-medium", "sd3.5-large", "flux-dev",
                                       "flux-schnell"), default="sd15",
                    help="sd15: the SD v1.5 UNet config at 512x512 with a 14M adaptor; sdxl: the SDXL base UNet at "
                         "1024x1024 (cut at 64x64, the adaptor as wide as its r_out); demo: the demo UNet; "
                         "sd3.5-medium / sd3.5-large: the SD3.5 transformer at 1024x1024, flux-dev / flux-schnell: "
                         "the Flux transformer at 1024x1024 (no CFG), each with the identity and a learned token "
                         "adaptor (--cut k: the first and last k blocks always run)")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--clock", type=int, default=2, help="adaptor on every N-th step")
    ap.add_argument("--cut", type=int, default=1,
                    help="the split level: a UNet's (unet_split.py: 1 the paper's; 0 DeepCache's, H_in = conv_in, "
                         "H_out = the UNet's last layer), a transformer's always-run blocks at each end "
                         "(transformer_split.py; 0: an adaptor step runs no block)")
    ap.add_argument("--controlnet", action="store_true",
                    help="sd15 / sdxl: also count a ControlNet beside the UNet (flops_controlnet.py)")
    ap.add_argument("--json", default=None, help="also write the JSON here")
    return ap


def _shipped_demo() -> tuple:
    """(unet_config, text_tokens, text_dim, adaptor_hidden) of the committed demo model, and
    whether its adaptor reads the pooled text: read from its unet/config.json and its
    clockwork_adaptor/ metadata, so the count follows what ships."""
    from diffusers import UNet2DConditionModel

    from clockwork_engine.clockwork.adaptors import read_meta
    from clockwork_engine.demo import models
    from clockwork_engine.demo.pipeline import DEMO_DIR
    from clockwork_engine.engine import ADAPTOR_FOLDER

    config = {k: v for k, v in UNet2DConditionModel.load_config(DEMO_DIR, subfolder="unet").items()
              if not k.startswith("_")}
    adaptor = read_meta(os.path.join(DEMO_DIR, ADAPTOR_FOLDER))["adaptor"]
    return (config, models.TEXT_MAX_LENGTH, config["cross_attention_dim"], adaptor["hidden_channels"],
            bool(adaptor["text_embed_dim"]))


def run(args) -> dict:
    if args.arch == "sd15":
        result = count_arch(SD15_UNET, SD15_TEXT_TOKENS, 768, SD15_ADAPTOR_HIDDEN, args.steps, args.clock, cut=args.cut)
    elif args.arch.startswith("flux"):
        config = FLUX_DEV if args.arch == "flux-dev" else FLUX_SCHNELL
        result = count_transformer(config, args.steps, args.clock, cfg_batch=1, cut=args.cut,
                                   text_tokens=FLUX_TEXT_TOKENS[args.arch], flux=True)
    elif args.arch.startswith("sd3.5"):
        config = SD35_MEDIUM if args.arch == "sd3.5-medium" else SD35_LARGE
        result = count_transformer(config, args.steps, args.clock, cut=args.cut)
    elif args.arch == "sdxl":
        result = count_arch(SDXL_UNET, SD15_TEXT_TOKENS, 2048, None, args.steps, args.clock, cut=args.cut)
    else:
        from clockwork_engine.demo.pipeline import fingerprint

        config, tokens, text_dim, hidden, adaptor_text = _shipped_demo()
        result = count_arch(config, tokens, text_dim, hidden, args.steps, args.clock, cut=args.cut,
                            adaptor_text=adaptor_text)
        result["demo_unet"] = fingerprint()  # the committed UNet whose config was counted
    if getattr(args, "controlnet", False):
        from clockwork_engine.tools import flops_controlnet

        if args.arch not in ("sd15", "sdxl"):
            raise ValueError("--controlnet counts the SD v1.5 and SDXL ControlNets (--arch sd15 or sdxl)")
        result = flops_controlnet.add_to(result, SD15_UNET if args.arch == "sd15" else SDXL_UNET, SD15_TEXT_TOKENS,
                                         768 if args.arch == "sd15" else 2048)
    cut = f" --cut {args.cut}" if args.cut != 1 else ""
    cut += " --controlnet" if getattr(args, "controlnet", False) else ""
    result = {"arch": args.arch, "command": f"clockwork flops --arch {args.arch} --steps {args.steps} "
              f"--clock {args.clock}{cut}", **result}
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text)
    return result
