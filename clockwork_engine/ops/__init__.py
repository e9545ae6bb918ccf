"""Public ops. Each has a torch reference; faster kernels (kernels/, csrc/) plug in by device."""

from clockwork_engine.ops.group_norm import extension_available, group_norm_act

__all__ = ["extension_available", "group_norm_act"]
