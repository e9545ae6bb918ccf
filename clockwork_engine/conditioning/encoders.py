"""Model conditioning: what the UNet is given beside the latents, one class a model family.

  SD 1.x / 2.x  one tokenizer and text encoder; the UNet cross-attends to its last hidden
                state (StableDiffusionPipeline.encode_prompt).
  SDXL          two (CLIP ViT-L, OpenCLIP bigG with projection); the UNet cross-attends to
                both penultimate hidden states concatenated and takes added conditioning:
                the second encoder's pooled output and the time ids (original size, crop
                top-left, target size) (StableDiffusionXLPipeline). With
                force_zeros_for_empty_prompt and no negative prompt, the negative rows are zeros.

encode() returns (text [N, L, D], added or None), N = 2B with CFG (the negative rows first, as
diffusers orders them); added = {"text_embeds": [N, P], "time_ids": [N, 6]}: the UNet's
added_cond_kwargs. for_sampler() is that conditioning as distillation feeds a teacher and its
student; components() the text parts of a diffusers pipeline around them (a saved student).
"""

from __future__ import annotations

import torch

from clockwork_engine.conditioning.text import PromptEncoder


class TextConditioning:
    """SD 1.x / 2.x: one text encoder."""

    sdxl = False

    def __init__(self, prompts: PromptEncoder):
        self.prompts = prompts

    def encode(self, prompts: list[str], negatives: list[str], cfg: bool, height: int, width: int,
               negative_given: bool = True):
        return self.prompts.encode(negatives + prompts if cfg else prompts), None

    def components(self) -> dict:
        """The text components of a diffusers pipeline (StableDiffusionPipeline's keywords)."""
        return {"tokenizer": self.prompts.tokenizer, "text_encoder": self.prompts.text_encoder}


class SDXLConditioning:
    """SDXL: two text encoders, the pooled output and the time ids as added conditioning."""

    sdxl = True

    def __init__(self, prompts: PromptEncoder, prompts_2: PromptEncoder, force_zeros_for_empty_prompt: bool):
        self.prompts, self.prompts_2 = prompts, prompts_2
        self.force_zeros = force_zeros_for_empty_prompt

    def encode(self, prompts: list[str], negatives: list[str], cfg: bool, height: int, width: int,
               negative_given: bool = True):
        rows = negatives + prompts if cfg else prompts
        text_2, pooled = self.prompts_2.encode_with_pooled(rows)
        text = torch.cat([self.prompts.encode(rows), text_2], dim=-1)
        if cfg and not negative_given and self.force_zeros:
            text, pooled = text.clone(), pooled.clone()
            text[: len(prompts)] = 0
            pooled[: len(prompts)] = 0
        # original size = target size = the image's, no crop (the pipeline's defaults)
        time_ids = torch.tensor([[height, width, 0, 0, height, width]], dtype=text.dtype).repeat(len(rows), 1)
        return text, {"text_embeds": pooled, "time_ids": time_ids}

    def components(self) -> dict:
        """The text components of a diffusers pipeline (StableDiffusionXLPipeline's keywords)."""
        return {"tokenizer": self.prompts.tokenizer, "text_encoder": self.prompts.text_encoder,
                "tokenizer_2": self.prompts_2.tokenizer, "text_encoder_2": self.prompts_2.text_encoder,
                "force_zeros_for_empty_prompt": self.force_zeros}


def for_sampler(engine, prompts: list[str], cfg: bool, height: int | None = None, width: int | None = None):
    """(text, added or None) on the engine's device and dtype, as its sampler gets them for these
    prompts and no negative prompt (with CFG the empty prompt's rows first, SDXL's zeros where its
    pipeline asks for them), for an image of height x width (default: the model's size)."""
    height, width = height or engine.default_size, width or engine.default_size
    text, added = engine.conditioning.encode(list(prompts), [""] * len(prompts), cfg, height, width,
                                             negative_given=False)
    added = None if added is None else {k: v.to(engine.device, engine.model.dtype) for k, v in added.items()}
    return text.to(engine.device, engine.model.dtype), added


def rows(added: dict | None, index) -> dict | None:
    """The rows `index` (a slice or index tensor) of added conditioning; None stays None."""
    return None if added is None else {k: v[index] for k, v in added.items()}
