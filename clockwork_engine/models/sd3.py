"""The SD3 / SD3.5 family: SD3Transformer2DModel (MMDiT) under StableDiffusion3Pipeline,
sampled by flow matching (FlowMatchEulerDiscreteScheduler: the solver table reads its shift
and, with dynamic shifting, the mu of the image's token count)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from clockwork_engine.models.errors import ModelLoadError


@dataclass(frozen=True)
class SD3Family:
    name: str = "sd3"
    model_component: str = "transformer"
    text_components: tuple[str, ...] = ("tokenizer", "text_encoder", "tokenizer_2", "text_encoder_2",
                                         "tokenizer_3", "text_encoder_3")
    pipeline_class: str = "StableDiffusion3Pipeline"
    pipeline_settings: tuple[str, ...] = ()
    cfg: bool = True
    flow_matching: bool = True
    supports: frozenset[str] = frozenset()

    def matches(self, model) -> bool:
        from diffusers import SD3Transformer2DModel

        return isinstance(model, SD3Transformer2DModel)

    def conditioning(self, components: dict, text_tokens: int | None = None, **encoder_kw):
        from clockwork_engine.conditioning.sd3 import MAX_SEQUENCE_LENGTH, SD3Conditioning
        from clockwork_engine.conditioning.text import PromptEncoder

        c = components
        for name in ("tokenizer_2", "text_encoder_2"):
            if c.get(name) is None:
                raise ValueError(f"an SD3 model needs {name} (CLIP-G)")
        t5, tokens = None, MAX_SEQUENCE_LENGTH if text_tokens is None else text_tokens
        if c.get("text_encoder_3") is not None:
            if c.get("tokenizer_3") is None:
                raise ValueError("text_encoder_3 (T5) needs tokenizer_3")
            if tokens < 1:
                raise ValueError("max_sequence_length must be >= 1 where the model has a T5 encoder")
            t5 = PromptEncoder(c["tokenizer_3"], c["text_encoder_3"], max_length=tokens, **encoder_kw)
        return SD3Conditioning(PromptEncoder(c["tokenizer"], c["text_encoder"], penultimate=True, **encoder_kw),
                               PromptEncoder(c["tokenizer_2"], c["text_encoder_2"], penultimate=True, **encoder_kw),
                               t5, c["transformer"].config.joint_attention_dim, tokens)

    def denoiser(self, model):
        def denoise(x, t, text, features, cond=None, added=None):
            t = t.expand(x.shape[0]) if t.dim() == 0 else t  # [B] as the pipeline passes it
            return model(hidden_states=x, timestep=t, encoder_hidden_states=text,
                         pooled_projections=added["pooled_projections"], return_dict=False)[0], None

        return denoise

    def split(self, model, cut: int):
        from clockwork_engine.clockwork.transformer_split import TransformerSplit

        return TransformerSplit(model, cut)

    def size_multiple(self, model, vae_factor: int) -> int:
        return vae_factor * model.config.patch_size

    def default_size(self, model, vae_factor: int) -> int:
        return model.config.sample_size * vae_factor

    def guidance_inputs(self, model, scales) -> dict:
        return {}

    def guidance_dim(self, model) -> int:
        return 0

    def table_options(self, model, scheduler, steps: int, height: int, width: int, vae_factor: int) -> dict:
        """StableDiffusion3Pipeline's mu: with dynamic shifting, the shift follows the image's
        token count (calculate_shift), so each size has its own solver table."""
        cfg = scheduler.config
        if not cfg.get("use_dynamic_shifting"):
            return {}
        patch = model.config.patch_size
        tokens = (height // vae_factor // patch) * (width // vae_factor // patch)
        base, top = cfg.get("base_image_seq_len", 256), cfg.get("max_image_seq_len", 4096)
        slope = (cfg.get("max_shift", 1.16) - cfg.get("base_shift", 0.5)) / (top - base)
        mu = tokens * slope + cfg.get("base_shift", 0.5) - slope * base
        if not math.isfinite(mu):
            raise ValueError(f"dynamic shifting gives mu={mu} for a {height}x{width} image")
        return {"mu": mu}

    def check(self, components: dict, where: str) -> None:
        model, vae = components["transformer"], components["vae"]
        if model.config.in_channels != vae.config.latent_channels:
            raise ModelLoadError(f"{where}: the transformer takes {model.config.in_channels} latent channels, "
                                 f"vae makes {vae.config.latent_channels}")
        widths = [getattr(components.get(k), "config", None) for k in ("text_encoder", "text_encoder_2")]
        if all(w is not None for w in widths):
            pooled = sum(getattr(w, "projection_dim", 0) for w in widths)
            if pooled != model.config.pooled_projection_dim:
                raise ModelLoadError(f"{where}: the transformer takes {model.config.pooled_projection_dim}-d pooled "
                                     f"projections, the CLIP encoders give {pooled}-d")
            clip = sum(w.hidden_size for w in widths)
            if clip > model.config.joint_attention_dim:
                raise ModelLoadError(f"{where}: the CLIP encoders' {clip}-d states are wider than the transformer's "
                                     f"joint attention ({model.config.joint_attention_dim})")
        t5 = components.get("text_encoder_3")
        if t5 is not None and getattr(t5.config, "d_model", model.config.joint_attention_dim) != \
                model.config.joint_attention_dim:
            raise ModelLoadError(f"{where}: T5 gives {t5.config.d_model}-d states, the transformer attends to "
                                 f"{model.config.joint_attention_dim}-d")


SD3 = SD3Family()
