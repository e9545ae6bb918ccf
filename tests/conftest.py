"""Shared fixtures: tiny random pipelines built in code (fast) and the committed demo."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Triton kernels are tested on CPU tensors by its interpreter. The variable must be set
# before anything imports triton (diffusers does, through torch), so it is set here.
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

TINY_UNET = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(8, 16, 32),
    layers_per_block=1,
    cross_attention_dim=32,
    attention_head_dim=2,
    norm_num_groups=4,
)
TINY_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 2,
    up_block_types=("UpDecoderBlock2D",) * 2,
    block_out_channels=(8, 16),
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=4,
    sample_size=16,
)


def make_tiny_pipeline(seed: int = 0, scheduler=None):
    """A StableDiffusionPipeline of random tiny components (16x16 images, 8x8 latents)."""
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import AutoTokenizer, BertConfig, BertModel

    from clockwork_engine.demo import models

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**TINY_UNET)
    vae = AutoencoderKL(**TINY_VAE)
    tokenizer = AutoTokenizer.from_pretrained(models.minilm_dir(), model_max_length=12)
    text_encoder = BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                        intermediate_size=37, vocab_size=tokenizer.vocab_size))
    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder.eval(), tokenizer=tokenizer, unet=unet,
        scheduler=scheduler or models.build_scheduler(), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )


@pytest.fixture(scope="session")
def tiny_pipe():
    return make_tiny_pipeline()


@pytest.fixture(scope="session")
def tiny_dir(tiny_pipe, tmp_path_factory):
    """The tiny pipeline saved as a full diffusers directory (text encoder included)."""
    path = tmp_path_factory.mktemp("tiny") / "pipe"
    tiny_pipe.save_pretrained(path, safe_serialization=True)
    return path


@pytest.fixture(scope="session")
def demo_engine():
    from clockwork_engine import Engine

    return Engine.from_pretrained("demo")
