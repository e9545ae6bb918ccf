"""Clockwork Diffusion: the UNet split (H_in / L / H_out), the adaptors that stand in for L on
clocked steps, the clock, the per-request feature cache, operating points and the clock search."""
