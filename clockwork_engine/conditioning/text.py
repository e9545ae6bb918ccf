"""Prompt encoding with a bounded, thread-safe LRU cache of embeddings.

Encoding is the same computation as diffusers' StableDiffusionPipeline.encode_prompt
(pad to the tokenizer's max length, no attention mask unless the encoder's config asks
for one, last hidden state), so cached embeddings equal what diffusers would compute.
"""

from __future__ import annotations

import copy
import threading
import warnings
from collections import OrderedDict

import torch

from clockwork_engine.compile import compiled


class PromptEncoder:
    def __init__(self, tokenizer, text_encoder, capacity: int = 256, compile_options: dict | None = None,
                 dtype: torch.dtype | None = None, penultimate: bool = False, max_length: int | None = None,
                 pooler: bool = False):
        """compile_options: run the text encoder compiled by TorchInductor with these options (the
        inductor backend's, or the compiled cuda backend's; None: eager);
        dtype: run a copy of the encoder in this dtype (None: as loaded). Embeddings are returned
        in the loaded encoder's dtype either way. penultimate: the hidden states of the layer
        before the last (SDXL's choice), and the encoder's pooled output kept too when its first
        output is one (CLIPTextModelWithProjection's text_embeds: encode_with_pooled).
        max_length: tokens a prompt is padded / truncated to (default the tokenizer's
        model_max_length; SD3's T5: the pipeline's max_sequence_length). pooler: the encoder's
        pooler_output [N, P] is the embedding (Flux's CLIP), not its hidden states."""
        if capacity < 0:
            raise ValueError(f"prompt cache capacity must be >= 0, got {capacity}")
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self._max_length = max_length
        out_dtype = text_encoder.dtype
        runner = text_encoder if dtype in (None, out_dtype) else copy.deepcopy(text_encoder).to(dtype)

        def forward(ids, mask):  # [N, L] token ids (and mask or None) -> ([N, L, D], [N, P] pooled or None)
            if pooler:
                return runner(ids, attention_mask=mask).pooler_output.to(out_dtype), None
            if not penultimate:
                return runner(ids, attention_mask=mask)[0].to(out_dtype), None
            out = runner(ids, attention_mask=mask, output_hidden_states=True)
            pooled = out[0].to(out_dtype) if out[0].dim() == 2 else None  # as SDXL's encode_prompt picks it
            return out.hidden_states[-2].to(out_dtype), pooled

        self._forward = forward if compile_options is None else \
            compiled(forward, compile_options, "text encoder", dynamic=None)
        self.capacity = capacity
        self._cache: OrderedDict[str, tuple] = OrderedDict()  # prompt -> ([L, D], [P] pooled or None)
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @property
    def max_length(self) -> int:
        return self._max_length or self.tokenizer.model_max_length

    def __len__(self) -> int:
        return len(self._cache)

    def clear(self):
        with self._lock:
            self._cache.clear()

    def encode(self, prompts: list[str]) -> torch.Tensor:
        """[len(prompts), L, D] embeddings; cached per prompt string."""
        return torch.stack([e[0] for e in self._lookup(prompts)])

    def encode_with_pooled(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """([len(prompts), L, D], [len(prompts), P]): the embeddings and the pooled output, one
        cache lookup (an encoder built with penultimate=True that has a pooled output)."""
        entries = self._lookup(prompts)
        if entries[0][1] is None:
            raise ValueError(f"{type(self.text_encoder).__name__} gives no pooled output")
        return torch.stack([e[0] for e in entries]), torch.stack([e[1] for e in entries])

    def _lookup(self, prompts: list[str]) -> list[tuple]:
        with self._lock:
            found = {p: self._cache[p] for p in prompts if p in self._cache}
            for p in found:
                self._cache.move_to_end(p)
        missing = list(dict.fromkeys(p for p in prompts if p not in found))
        self.hits += len(prompts) - len(missing)
        self.misses += len(missing)
        if missing:
            hidden, pooled = self._encode_uncached(missing)
            fresh = {p: (hidden[k], None if pooled is None else pooled[k]) for k, p in enumerate(missing)}
            found.update(fresh)
            with self._lock:
                for p, e in fresh.items():
                    self._cache[p] = e
                    self._cache.move_to_end(p)
                while len(self._cache) > self.capacity:
                    self._cache.popitem(last=False)
        return [found[p] for p in prompts]

    @torch.no_grad()
    def _encode_uncached(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        tok = self.tokenizer
        ids = tok(prompts, padding="max_length", max_length=self.max_length, truncation=True,
                  return_tensors="pt")
        full_lengths = [len(x) for x in tok(prompts, truncation=False)["input_ids"]]
        for prompt, n in zip(prompts, full_lengths, strict=True):
            if n > self.max_length:
                warnings.warn(
                    f"prompt is {n} tokens, longer than the text encoder's {self.max_length}; "
                    f"it was truncated: {prompt[:80]!r}", stacklevel=5,
                )
        device = self.text_encoder.device
        use_mask = getattr(self.text_encoder.config, "use_attention_mask", False)
        mask = ids.attention_mask.to(device) if use_mask else None
        return self._forward(ids.input_ids.to(device), mask)
