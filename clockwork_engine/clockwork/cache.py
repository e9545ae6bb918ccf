"""The per-generation feature cache: r_out of the last step (and, later, attention maps).

Config (what to cache) / State (the tensors of one request, reset() between requests):
the engine creates one State per generate() call, so concurrent or consecutive requests
never see each other's features.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class CacheConfig:
    r_out: bool = True  # keep L's output for the next adaptor step


class CacheState:
    def __init__(self, config: CacheConfig | None = None):
        self.config = config or CacheConfig()
        self.r_out: torch.Tensor | None = None  # [B', C_out, h, w], B' = 2B with CFG

    def reset(self):
        self.r_out = None

    def nbytes(self) -> int:
        return 0 if self.r_out is None else self.r_out.numel() * self.r_out.element_size()
