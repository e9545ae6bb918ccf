"""Model families and loading: reading a diffusers directory (safetensors only), checkpoints,
the tiny decoder."""
