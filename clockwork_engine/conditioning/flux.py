"""Flux's conditioning (FluxPipeline.encode_prompt).

CLIP (CLIPTextModel) gives its pooled output only: the transformer's pooled_projections
[N, 768]; T5 gives its last hidden state over max_sequence_length tokens: text [N, T, D_joint].
No negative rows: Flux-dev is guidance-distilled (the guidance scale is an input of the
transformer) and Flux-schnell takes none; FluxPipeline's true CFG (true_cfg_scale with a
negative prompt) is not run by the engine and is refused by name.
"""

from __future__ import annotations

from clockwork_engine.conditioning.text import PromptEncoder

MAX_SEQUENCE_LENGTH = 512  # FluxPipeline's default max_sequence_length


class FluxConditioning:
    sdxl = False

    def __init__(self, clip: PromptEncoder, t5: PromptEncoder):
        self.prompts, self.prompts_2 = clip, t5

    def encode(self, prompts: list[str], negatives: list[str], cfg: bool, height: int, width: int,
               negative_given: bool = True):
        if negative_given or cfg:
            raise ValueError("a negative prompt on Flux runs FluxPipeline's true CFG (true_cfg_scale), which the "
                             "engine does not run; Flux-dev takes guidance_scale as an input instead")
        pooled = self.prompts.encode(prompts)  # [N, P]
        text = self.prompts_2.encode(prompts).to(pooled.dtype)  # [N, T, D_joint]
        return text, {"pooled_projections": pooled}

    def components(self) -> dict:
        """The text components of a diffusers FluxPipeline."""
        return {"tokenizer": self.prompts.tokenizer, "text_encoder": self.prompts.text_encoder,
                "tokenizer_2": self.prompts_2.tokenizer, "text_encoder_2": self.prompts_2.text_encoder}
