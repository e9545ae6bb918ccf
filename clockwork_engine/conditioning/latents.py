"""What a request starts from: its noise, drawn in the order diffusers' pipelines draw it, and
for an edit the image latents, the mask and the masked-image latents.

Draw order (each a [B, C, h, w] tensor from the request's generators, solver.NoiseStream):
  text-to-image  noise, the scheduler's draws
  img2img        the image's VAE posterior sample, noise, the scheduler's draws
                 (StableDiffusionImg2ImgPipeline.prepare_latents)
  inpaint        the image's posterior sample (a 4-channel UNet, or strength < 1), noise, the
                 masked image's posterior sample, the scheduler's draws
                 (StableDiffusionInpaintPipeline.prepare_latents / prepare_mask_latents; the
                 pipeline encodes the masked image for a 4-channel UNet too and drops it, so
                 its draw is made and dropped here as well)
"""

from __future__ import annotations

import torch

from clockwork_engine.conditioning.images import EditInputs
from clockwork_engine.sampler import TEXT_TO_IMAGE, NoiseStream, RequestInputs, SolverTable, Start


def start_for(edit: EditInputs | None, in_channels: int) -> Start:
    if edit is None:
        return TEXT_TO_IMAGE
    if edit.kind == "img2img":
        return Start(edit.strength, from_image=True)
    return Start(edit.strength, from_image=edit.strength < 1.0, blend=in_channels == 4)


@torch.no_grad()
def encode(vae, pixels: torch.Tensor, stream: NoiseStream) -> torch.Tensor:
    """[B, 3, H, W] in [-1, 1] -> scaled latents: a posterior sample, its noise from the stream."""
    dist = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist
    eps = stream.draw(vae.dtype).to(vae.device)
    return (dist.mean + dist.std * eps) * vae.config.scaling_factor


def prepare(table: SolverTable, vae, shape, generators, dtype, device, text, guidance,
            edit: EditInputs | None = None, added: dict | None = None) -> RequestInputs:
    """The request's RequestInputs; shape [B, C, h, w] of the latents, dtype the model's;
    added: the family's added conditioning (conditioning/), carried as it is."""
    stream = NoiseStream(generators, shape)
    start = table.start
    image = encode(vae, edit.pixels, stream).float() if start.from_image or start.blend else None
    noise = stream.draw(dtype).float()
    extra = mask = None
    if edit is not None and edit.mask is not None:
        mask = torch.nn.functional.interpolate(edit.mask, size=shape[2:]).to(device)  # nearest, as diffusers does
        masked = edit.pixels * (edit.mask < 0.5)
        if start.blend:
            stream.draw(vae.dtype)  # the masked image's posterior draw, made and dropped as the pipeline does
        else:  # a 9-channel inpainting UNet reads mask and masked image as extra input channels
            extra = torch.cat([mask, encode(vae, masked, stream).float()], dim=1)
    noise_terms = table.noise_terms([stream.draw(dtype) for _ in range(table.draws)])
    to = lambda t: None if t is None else t.to(device)  # noqa: E731
    return RequestInputs(
        latents=table.initial(noise, image).to(device), text=text, guidance=guidance, noise=to(noise_terms),
        extra=to(extra), mask=mask if start.blend else None,
        kept=to(table.blend_terms(image, noise)) if start.blend else None,
        added=added or None)
