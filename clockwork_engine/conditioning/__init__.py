"""What the denoiser is given beside the latents: prompt encoders (text), each family's
conditioning (encoders), edit inputs (images) and the initial latents (latents)."""
