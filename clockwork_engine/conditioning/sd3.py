"""SD3's conditioning (StableDiffusion3Pipeline.encode_prompt).

Three text encoders: CLIP-L and CLIP-G (both CLIPTextModelWithProjection) give their
penultimate hidden states, concatenated along the width and zero-padded to T5's width, and
their pooled text_embeds, concatenated: the transformer's pooled_projections. T5 (optional)
gives its last hidden state over max_sequence_length tokens; without it those tokens are
zeros, as diffusers makes them. The sequence the transformer attends to is [CLIP tokens, T5
tokens]: text [N, 77 + T, D_joint]. A missing negative prompt is the empty prompt, encoded.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from clockwork_engine.conditioning.text import PromptEncoder

MAX_SEQUENCE_LENGTH = 256  # StableDiffusion3Pipeline's default max_sequence_length


class SD3Conditioning:
    sdxl = False

    def __init__(self, prompts: PromptEncoder, prompts_2: PromptEncoder, prompts_3: PromptEncoder | None,
                 joint_dim: int, t5_tokens: int = MAX_SEQUENCE_LENGTH):
        self.prompts, self.prompts_2, self.prompts_3 = prompts, prompts_2, prompts_3
        self.joint_dim, self.t5_tokens = joint_dim, t5_tokens

    def encode(self, prompts: list[str], negatives: list[str], cfg: bool, height: int, width: int,
               negative_given: bool = True):
        rows = negatives + prompts if cfg else prompts
        text_1, pooled_1 = self.prompts.encode_with_pooled(rows)
        text_2, pooled_2 = self.prompts_2.encode_with_pooled(rows)
        clip = torch.cat([text_1, text_2], dim=-1)  # [N, 77, D_1 + D_2]
        if self.prompts_3 is None:
            t5 = clip.new_zeros(len(rows), self.t5_tokens, self.joint_dim)
        else:
            t5 = self.prompts_3.encode(rows).to(clip.dtype)  # [N, T, D_joint]
        clip = F.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
        return torch.cat([clip, t5], dim=-2), {"pooled_projections": torch.cat([pooled_1, pooled_2], dim=-1)}

    def components(self) -> dict:
        """The text components of a diffusers StableDiffusion3Pipeline."""
        third = self.prompts_3
        return {"tokenizer": self.prompts.tokenizer, "text_encoder": self.prompts.text_encoder,
                "tokenizer_2": self.prompts_2.tokenizer, "text_encoder_2": self.prompts_2.text_encoder,
                "tokenizer_3": None if third is None else third.tokenizer,
                "text_encoder_3": None if third is None else third.text_encoder}
