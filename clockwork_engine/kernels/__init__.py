"""Triton kernels (installed as clockwork_engine.kernels). Nothing here touches a device at import."""
