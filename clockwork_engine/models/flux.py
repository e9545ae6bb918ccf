"""The Flux family: FluxTransformer2DModel (double- then single-stream blocks, rotary position
embeddings) under FluxPipeline, sampled by flow matching with the resolution-dependent shift.

The engine keeps latents as [B, C, h, w] and the denoiser packs them into Flux's 2x2 patches
([B, h/2 * w/2, 4C]) around the transformer and unpacks its output: the flow-match Euler step
is elementwise, so packing commutes with it. Flux-dev embeds the guidance scale (one a row);
neither it nor Flux-schnell runs CFG.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from clockwork_engine.models.errors import ModelLoadError
from clockwork_engine.models.flux_packing import image_ids, pack, unpack

DEFAULT_SAMPLE_SIZE = 128  # FluxPipeline.default_sample_size: 1024x1024 through the 8x VAE


@dataclass(frozen=True)
class FluxFamily:
    name: str = "flux"
    model_component: str = "transformer"
    text_components: tuple[str, ...] = ("tokenizer", "text_encoder", "tokenizer_2", "text_encoder_2")
    pipeline_class: str = "FluxPipeline"
    pipeline_settings: tuple[str, ...] = ()
    flow_matching: bool = True
    cfg: bool = False  # guidance-distilled (dev) or guidance-free (schnell): one model call a step
    supports: frozenset[str] = frozenset()

    def matches(self, model) -> bool:
        from diffusers import FluxTransformer2DModel

        return isinstance(model, FluxTransformer2DModel)

    def conditioning(self, components: dict, text_tokens: int | None = None, **encoder_kw):
        from clockwork_engine.conditioning.flux import MAX_SEQUENCE_LENGTH, FluxConditioning
        from clockwork_engine.conditioning.text import PromptEncoder

        c, tokens = components, MAX_SEQUENCE_LENGTH if text_tokens is None else text_tokens
        if tokens < 1:
            raise ValueError("max_sequence_length must be >= 1 on Flux: its T5 tokens are the whole text")
        return FluxConditioning(PromptEncoder(c["tokenizer"], c["text_encoder"], pooler=True, **encoder_kw),
                                PromptEncoder(c["tokenizer_2"], c["text_encoder_2"], max_length=tokens, **encoder_kw))

    def denoiser(self, model):
        def denoise(x, t, text, features, cond=None, added=None):  # x [B, C, h, w]
            h, w = x.shape[-2:]
            t = t.expand(x.shape[0]) if t.dim() == 0 else t
            out = model(hidden_states=pack(x), timestep=(t / 1000).to(x.dtype), guidance=added.get("guidance"),
                        pooled_projections=added["pooled_projections"], encoder_hidden_states=text,
                        txt_ids=text.new_zeros(text.shape[1], 3), img_ids=image_ids(h, w, x.device, x.dtype),
                        return_dict=False)[0]
            return unpack(out, h, w), None

        return denoise

    def split(self, model, cut: int):
        from clockwork_engine.clockwork.transformer_split import TransformerSplit

        return TransformerSplit(model, cut)

    def size_multiple(self, model, vae_factor: int) -> int:
        return vae_factor * 2  # the VAE, then the 2x2 packing

    def default_size(self, model, vae_factor: int) -> int:
        return DEFAULT_SAMPLE_SIZE * vae_factor

    def guidance_dim(self, model) -> int:
        return 0

    def guidance_inputs(self, model, scales: torch.Tensor) -> dict:
        """Flux-dev's guidance embedding reads each row's scale; schnell takes none."""
        return {"guidance": scales} if model.config.guidance_embeds else {}

    def table_options(self, model, scheduler, steps: int, height: int, width: int, vae_factor: int) -> dict:
        """FluxPipeline's grid: sigmas linspace(1, 1/N, N) set by the caller, shifted by the mu of
        the packed token count (calculate_shift with the pipeline's defaults), stepped in order
        from index 0 (the pipeline's set_begin_index(0))."""
        cfg = scheduler.config
        tokens = (height // vae_factor // 2) * (width // vae_factor // 2)
        base, top = cfg.get("base_image_seq_len", 256), cfg.get("max_image_seq_len", 4096)
        slope = (cfg.get("max_shift", 1.15) - cfg.get("base_shift", 0.5)) / (top - base)
        mu = tokens * slope + cfg.get("base_shift", 0.5) - slope * base
        if not math.isfinite(mu):
            raise ValueError(f"Flux's shift gives mu={mu} for a {height}x{width} image")
        return {"mu": mu, "sigmas": tuple(float(s) for s in np.linspace(1.0, 1 / steps, steps)), "begin_index": 0}

    def check(self, components: dict, where: str) -> None:
        model, vae = components["transformer"], components["vae"]
        for name in ("tokenizer_2", "text_encoder_2"):
            if components.get(name) is None:
                raise ModelLoadError(f"{where}: a Flux model needs {name} (T5)")
        if model.config.in_channels != 4 * vae.config.latent_channels:
            raise ModelLoadError(f"{where}: the transformer takes {model.config.in_channels} packed channels, "
                                 f"the vae's {vae.config.latent_channels} latent channels pack to "
                                 f"{4 * vae.config.latent_channels}")
        clip, t5 = components["text_encoder"].config, components["text_encoder_2"].config
        if getattr(clip, "hidden_size", model.config.pooled_projection_dim) != model.config.pooled_projection_dim:
            raise ModelLoadError(f"{where}: the transformer takes {model.config.pooled_projection_dim}-d pooled "
                                 f"projections, CLIP gives {clip.hidden_size}-d")
        if getattr(t5, "d_model", model.config.joint_attention_dim) != model.config.joint_attention_dim:
            raise ModelLoadError(f"{where}: T5 gives {t5.d_model}-d states, the transformer attends to "
                                 f"{model.config.joint_attention_dim}-d")


FLUX = FluxFamily()
