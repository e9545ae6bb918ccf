"""Public ops. Each has a torch reference; faster kernels (kernels/, csrc/) plug in by device."""

from .group_norm import group_norm_act

__all__ = ["group_norm_act"]
