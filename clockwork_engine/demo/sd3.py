"""The SD3-layout demo ("demo-sd3"): a StableDiffusion3Pipeline at the shapes world's size.

Components, as StableDiffusion3Pipeline has them:
- transformer: SD3Transformer2DModel, 6 joint blocks of width 160 (5 heads of 32, RMS q/k
  norms as SD3.5 has; 5.4M parameters), patch 2 over the demo VAE's 16x16x4 latents: 64 image tokens;
- CLIP-L and CLIP-G stand-ins: two small CLIPTextModelWithProjection (64-d and 128-d, 2
  layers), random and frozen (seeded), over a CLIP BPE vocabulary of the shapes world's words
  (every caption word one token, 16 tokens with BOS/EOS); their penultimate states (192-d,
  the joint attention width) and pooled projections (64 + 128 = 192) condition the transformer;
- no T5 (SD3 runs without it: its tokens are zeros) and max_sequence_length 0 (the engine's
  setting and the pipeline's argument), so the transformer attends to the 16 CLIP tokens;
- the demo's VAE (4 latent channels, shift 0) and FlowMatchEulerDiscreteScheduler (shift 1:
  64 tokens are far below SD3's 4096, where shift 3 fits).
Trained by demo/train_sd3.py (flow matching); DEMO_SD3_DIR holds it.
"""

from __future__ import annotations

import json
import os
import shutil

from clockwork_engine.demo import models

DEMO_SD3_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights_sd3")
MAX_SEQUENCE_LENGTH = 0  # T5 tokens (absent: zeros): none
SETTINGS = {"guidance_scale": 3.0, "max_sequence_length": MAX_SEQUENCE_LENGTH}  # clockwork_engine.json

TRANSFORMER_CONFIG = dict(sample_size=16, patch_size=2, in_channels=4, out_channels=4, num_layers=6,
                          attention_head_dim=32, num_attention_heads=5, joint_attention_dim=192,
                          caption_projection_dim=160, pooled_projection_dim=192, pos_embed_max_size=32,
                          qk_norm="rms_norm")
CLIP_WIDTHS = (64, 128)  # CLIP-L's and CLIP-G's stand-ins: hidden size = projection size
SCHEDULER_CONFIG = dict(shift=1.0)


def vocabulary() -> tuple[dict[str, int], list[str]]:
    """(vocab, merges) of a CLIP byte-level BPE in which every word of the shapes captions is
    one token: for each word, merges are added (lowest priority last) until the merges before
    it and its own leave it whole, so a later word's merges never split an earlier one."""
    from clockwork_engine.datasets import shapes

    words = sorted({w for s in shapes.all_scenes() for w in s.caption.split()})
    chars = sorted(set("abcdefghijklmnopqrstuvwxyz0123456789,.!?'-") | {c for w in words for c in w})
    vocab = ["<|startoftext|>", "<|endoftext|>"] + chars + [c + "</w>" for c in chars]
    merges: list[tuple[str, str]] = []
    for word in words:
        tokens = _bpe(list(word[:-1]) + [word[-1] + "</w>"], merges)
        while len(tokens) > 1:
            merges.append((tokens[0], tokens[1]))
            vocab.append(tokens[0] + tokens[1])
            tokens = _bpe(list(word[:-1]) + [word[-1] + "</w>"], merges)
    return {t: i for i, t in enumerate(dict.fromkeys(vocab))}, [f"{a} {b}" for a, b in merges]


def _bpe(tokens: list[str], merges: list[tuple[str, str]]) -> list[str]:
    """CLIPTokenizer.bpe: merge the lowest-ranked adjacent pair until none is ranked."""
    ranks = {m: i for i, m in enumerate(merges)}
    while len(tokens) > 1:
        pairs = [(ranks.get((a, b), len(ranks)), i) for i, (a, b) in enumerate(zip(tokens, tokens[1:]))]
        rank, i = min(pairs)
        if rank == len(ranks):
            break
        tokens = tokens[:i] + [tokens[i] + tokens[i + 1]] + tokens[i + 2 :]
    return tokens


def build_tokenizer(folder: str):
    from transformers import CLIPTokenizer

    vocab, merges = vocabulary()
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "vocab.json"), "w") as f:
        json.dump(vocab, f)
    with open(os.path.join(folder, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
    return CLIPTokenizer(os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt"),
                         model_max_length=models.TEXT_MAX_LENGTH)


def build_text_encoder(width: int, vocab_size: int, seed: int, projection: bool = True):
    """A random, frozen CLIP text encoder (CLIPTextModelWithProjection, or CLIPTextModel: Flux's
    CLIP gives its pooled output unprojected)."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    # BOS / EOS / padding are the vocabulary's ids 0 and 1: the pooled state is read at the EOS
    config = CLIPTextConfig(hidden_size=width, projection_dim=width, intermediate_size=2 * width, num_hidden_layers=2,
                            num_attention_heads=width // 32, vocab_size=vocab_size, bos_token_id=0, eos_token_id=1,
                            pad_token_id=1, max_position_embeddings=models.TEXT_MAX_LENGTH, hidden_act="gelu")
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config).requires_grad_(False).eval()


def build_transformer(**overrides):
    from diffusers import SD3Transformer2DModel

    return SD3Transformer2DModel(**{**TRANSFORMER_CONFIG, **overrides})


def assemble(transformer, vae, tokenizer_dir: str, seed: int = 0):
    """A StableDiffusion3Pipeline around the demo components (the text encoders seeded)."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

    tokenizer = build_tokenizer(tokenizer_dir)
    encoders = [build_text_encoder(w, len(tokenizer), seed + k) for k, w in enumerate(CLIP_WIDTHS)]
    # SD3's pipeline decodes latents / scaling_factor + shift_factor: the demo VAE's shift is 0
    sd3_vae = AutoencoderKL.from_config({**vae.config, "shift_factor": 0.0}).eval()
    sd3_vae.load_state_dict(vae.state_dict())
    return StableDiffusion3Pipeline(transformer=transformer, vae=sd3_vae, scheduler=FlowMatchEulerDiscreteScheduler(
        **SCHEDULER_CONFIG), text_encoder=encoders[0], tokenizer=tokenizer, text_encoder_2=encoders[1],
        tokenizer_2=tokenizer, text_encoder_3=None, tokenizer_3=None)


def save(pipe, folder: str = DEMO_SD3_DIR):
    """save_pretrained with the engine's settings for it (clockwork_engine.json)."""
    pipe.save_pretrained(folder, safe_serialization=True)
    with open(os.path.join(folder, "clockwork_engine.json"), "w") as f:
        json.dump(SETTINGS, f)


def load(folder: str = DEMO_SD3_DIR, **kwargs):
    from diffusers import StableDiffusion3Pipeline

    none = dict.fromkeys(("text_encoder_3", "tokenizer_3", "image_encoder", "feature_extractor"))
    return StableDiffusion3Pipeline.from_pretrained(folder, **{**none, **kwargs})


def export(src: str, dst: str = DEMO_SD3_DIR):
    """Copy a trained pipeline into the repository: the transformer and VAE in fp16 (loaded
    back as fp32), the small text encoders as they are."""
    from safetensors.torch import load_file, save_file

    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("checkpoint*", "ema", "*.png", "*.pt"))
    for part in ("transformer", "vae"):
        path = os.path.join(dst, part, "diffusion_pytorch_model.safetensors")
        tensors = load_file(path)
        save_file({k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}, path,
                  metadata={"format": "pt"})
