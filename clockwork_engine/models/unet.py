"""The UNet families: SD 1.x / 2.x (one text encoder) and SDXL (two, with added conditioning),
diffusers' UNet2DConditionModel under StableDiffusionPipeline / StableDiffusionXLPipeline."""

from __future__ import annotations

from dataclasses import dataclass

from clockwork_engine.models.errors import ModelLoadError


@dataclass(frozen=True)
class UNetFamily:
    name: str
    sdxl: bool
    text_components: tuple[str, ...]
    pipeline_class: str
    pipeline_settings: tuple[str, ...] = ()  # the pipeline's config values the family reads
    model_component: str = "unet"
    cfg: bool = True
    flow_matching: bool = False
    supports: frozenset[str] = frozenset({"edit", "attention_reuse", "lora", "controlnet"})

    def matches(self, model) -> bool:
        from diffusers import UNet2DConditionModel

        if not isinstance(model, UNet2DConditionModel):
            return False
        return (model.config.addition_embed_type == "text_time") == self.sdxl

    def conditioning(self, components: dict, text_tokens: int | None = None, **encoder_kw):
        from clockwork_engine.conditioning.encoders import SDXLConditioning, TextConditioning
        from clockwork_engine.conditioning.text import PromptEncoder

        if text_tokens is not None:
            raise ValueError("max_sequence_length sets SD3's and Flux's T5 tokens; a UNet model has no T5")
        c = components
        if not self.sdxl:
            if c["unet"].config.addition_embed_type is not None:
                raise ValueError(f"UNets with addition_embed_type={c['unet'].config.addition_embed_type!r} "
                                 "are not supported")
            return TextConditioning(PromptEncoder(c["tokenizer"], c["text_encoder"], **encoder_kw))
        if c.get("tokenizer_2") is None or c.get("text_encoder_2") is None:
            raise ValueError("an SDXL UNet (addition_embed_type 'text_time') needs tokenizer_2 and text_encoder_2")
        return SDXLConditioning(PromptEncoder(c["tokenizer"], c["text_encoder"], penultimate=True, **encoder_kw),
                                PromptEncoder(c["tokenizer_2"], c["text_encoder_2"], penultimate=True, **encoder_kw),
                                bool(c.get("force_zeros_for_empty_prompt", False)))

    def denoiser(self, model):
        from clockwork_engine.sampler.steps import unet_denoiser

        return unet_denoiser(model)

    def split(self, model, cut: int):
        from clockwork_engine.clockwork.unet_split import UNetSplit

        return UNetSplit(model, cut)

    def size_multiple(self, model, vae_factor: int) -> int:
        # sides must survive the VAE and every UNet downsampler without rounding
        return vae_factor * 2 ** (len(model.config.block_out_channels) - 1)

    def default_size(self, model, vae_factor: int) -> int:
        size = model.config.sample_size
        return (size if isinstance(size, int) else size[0]) * vae_factor

    def guidance_inputs(self, model, scales) -> dict:
        return {}

    def guidance_dim(self, model) -> int:
        # a guidance-distilled UNet embeds the guidance scale (time_cond_proj_dim) instead of CFG
        return model.config.time_cond_proj_dim or 0

    def table_options(self, model, scheduler, steps: int, height: int, width: int, vae_factor: int) -> dict:
        return {}

    def check(self, components: dict, where: str) -> None:
        """SD: the text encoder's width is what the UNet cross-attends to; SDXL: both widths add up to it."""
        missing = [k for k in self.text_components if components.get(k) is None]
        if missing:
            kind = "an SDXL UNet (addition_embed_type 'text_time')" if self.sdxl else "an SD UNet"
            raise ModelLoadError(f"{where}: {kind} needs {' and '.join(missing)}")
        unet, vae, te, te2 = (components.get(k) for k in ("unet", "vae", "text_encoder", "text_encoder_2"))
        latent = vae.config.latent_channels
        if unet.config.in_channels not in (latent, 2 * latent + 1):  # 2C + 1: an inpainting UNet
            raise ModelLoadError(f"{where}: unet takes {unet.config.in_channels} latent channels, vae makes {latent}")
        hidden = getattr(te.config, "hidden_size", None)
        if hidden is not None and te2 is not None:
            hidden += getattr(te2.config, "hidden_size", 0)
        if hidden is not None and unet.config.cross_attention_dim != hidden:
            raise ModelLoadError(f"{where}: unet cross-attends to {unet.config.cross_attention_dim}-d text, "
                                 f"the text encoder{'s give' if te2 is not None else ' gives'} {hidden}-d")
        if components.get("controlnet") is not None:
            check_controlnet(components["controlnet"], unet, where)


# A ControlNet's residuals are added to the UNet's skips and mid block: these must agree.
CONTROLNET_FIT = ("block_out_channels", "layers_per_block", "down_block_types", "cross_attention_dim")


def check_controlnet(controlnet, unet, where: str) -> None:
    from clockwork_engine.conditioning.control import nets_of

    def value(config, field):  # configs keep tuples as lists once saved and loaded
        v = config.get(field)
        return tuple(v) if isinstance(v, list) else v

    for k, net in enumerate(nets_of(controlnet)):
        for field in CONTROLNET_FIT:
            if value(net.config, field) != value(unet.config, field):
                raise ModelLoadError(f"{where}: ControlNet {k} has {field}={value(net.config, field)}, the unet "
                                     f"{value(unet.config, field)}: it was made for another UNet")


SD = UNetFamily("sd", False, ("tokenizer", "text_encoder"), "StableDiffusionPipeline")
SDXL = UNetFamily("sdxl", True, ("tokenizer", "text_encoder", "tokenizer_2", "text_encoder_2"),
                  "StableDiffusionXLPipeline", ("force_zeros_for_empty_prompt",))
