"""The Flux-layout demo ("demo-flux"): a FluxPipeline at the shapes world's size, guidance-
distilled from demo-sd3 as Flux-dev is from its CFG teacher.

Components, as FluxPipeline has them:
- transformer: FluxTransformer2DModel, 2 double-stream and 4 single-stream blocks of width 160
  (5 heads of 32, rotary axes 8 + 12 + 12), the guidance embedding on (dev); over the demo
  VAE's 16x16x4 latents packed 2x2: 64 image tokens of 16 channels;
- CLIP-L's stand-in: a small CLIPTextModel (64-d, 2 layers), its pooled output the transformer's
  pooled projection; T5's stand-in: a small T5EncoderModel (128-d, 2 layers), its 16 tokens the
  text stream; both random and frozen (seeded), over demo-sd3's CLIP BPE vocabulary (every
  caption word one token);
- the demo's VAE (shift 0) and FlowMatchEulerDiscreteScheduler with Flux's resolution-dependent
  shift, set so the demo's 64 tokens sample at shift 1 (demo-sd3's) and larger images more.
Trained by demo/train_flux.py; DEMO_FLUX_DIR holds it.
"""

from __future__ import annotations

import json
import os

from clockwork_engine.demo import models, sd3

DEMO_FLUX_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights_flux")
MAX_SEQUENCE_LENGTH = models.TEXT_MAX_LENGTH  # T5 tokens: every caption fits in 16
SIZE = 64  # FluxPipeline's default (its default_sample_size 128 x the VAE factor) would be 512
SETTINGS = {"guidance_scale": 3.0, "max_sequence_length": MAX_SEQUENCE_LENGTH,  # clockwork_engine.json
            "height": SIZE, "width": SIZE}
GUIDANCE_RANGE = (1.0, 5.0)  # the guidance scales the demo is distilled for

TRANSFORMER_CONFIG = dict(patch_size=1, in_channels=16, num_layers=2, num_single_layers=4, attention_head_dim=32,
                          num_attention_heads=5, joint_attention_dim=128, pooled_projection_dim=64,
                          guidance_embeds=True, axes_dims_rope=(8, 12, 12))
CLIP_WIDTH, T5_WIDTH = 64, 128
# mu = 0 (shift 1) at 64 image tokens, rising to 0.5 at 256 (a 128x128 image)
SCHEDULER_CONFIG = dict(use_dynamic_shifting=True, base_shift=0.0, max_shift=0.5, base_image_seq_len=64,
                        max_image_seq_len=256)


def build_t5(vocab_size: int, seed: int):
    import torch
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    config = T5Config(d_model=T5_WIDTH, d_ff=2 * T5_WIDTH, d_kv=32, num_layers=2, num_heads=T5_WIDTH // 32,
                      vocab_size=vocab_size, pad_token_id=1, eos_token_id=1, decoder_start_token_id=0)
    return T5EncoderModel(config).requires_grad_(False).eval()


def build_transformer(**overrides):
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel(**{**TRANSFORMER_CONFIG, **overrides})


def assemble(transformer, vae, tokenizer_dir: str, seed: int = 0):
    """A FluxPipeline around the demo components (the text encoders seeded)."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline

    tokenizer = sd3.build_tokenizer(tokenizer_dir)
    clip = sd3.build_text_encoder(CLIP_WIDTH, len(tokenizer), seed, projection=False)
    t5 = build_t5(len(tokenizer), seed + 1)
    # FluxPipeline decodes latents / scaling_factor + shift_factor: the demo VAE's shift is 0
    flux_vae = AutoencoderKL.from_config({**vae.config, "shift_factor": 0.0}).eval()
    flux_vae.load_state_dict(vae.state_dict())
    return FluxPipeline(transformer=transformer, vae=flux_vae, scheduler=FlowMatchEulerDiscreteScheduler(
        **SCHEDULER_CONFIG), text_encoder=clip, tokenizer=tokenizer, text_encoder_2=t5, tokenizer_2=tokenizer)


def save(pipe, folder: str = DEMO_FLUX_DIR):
    """save_pretrained with the engine's settings for it (clockwork_engine.json)."""
    pipe.save_pretrained(folder, safe_serialization=True)
    with open(os.path.join(folder, "clockwork_engine.json"), "w") as f:
        json.dump(SETTINGS, f)


def load(folder: str = DEMO_FLUX_DIR, **kwargs):
    from diffusers import FluxPipeline

    return FluxPipeline.from_pretrained(folder, **{**dict.fromkeys(("image_encoder", "feature_extractor")), **kwargs})


def export(src: str, dst: str = DEMO_FLUX_DIR):
    """Copy a trained pipeline into the repository as demo-sd3's export does (transformer and VAE in fp16)."""
    sd3.export(src, dst)
