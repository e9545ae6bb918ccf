"""ControlNet conditioning (StableDiffusionControlNetPipeline, its XL version): the control
images checked and preprocessed as the pipeline's control_image_processor does, the scale of
each ControlNet at each model evaluation (conditioning scale x the control_guidance_start/end
window), and the denoiser that adds the ControlNets' residuals to the UNet's.

The images and the per-evaluation scales ride in the request's added conditioning
(controlnet_cond_<k> [B', 3, H, W], controlnet_scales [E, n]); the step index that picks a row
of the scales is added by the sampler's step. In guess mode the ControlNets see the
conditional rows only and the unconditional rows get no residual, as the pipeline does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

COND, GUESS = "controlnet_cond_", "controlnet_cond_guess_"


@dataclass
class ControlInputs:
    images: list[torch.Tensor]  # one per ControlNet: [B, 3, H, W] float32 in [0, 1]
    scales: list[float]
    guess_mode: bool
    start: list[float]
    end: list[float]

    def signature(self) -> tuple:
        """What the step programs depend on (a graph key part)."""
        return len(self.images), self.guess_mode


def nets_of(controlnet) -> list:
    return list(getattr(controlnet, "nets", [controlnet]))


def control_inputs(controlnet, image, scale, guess_mode, start, end, rows: int, height: int, width: int,
                   vae_factor: int) -> ControlInputs:
    """The request's control inputs, one of each per ControlNet (a single value for one)."""
    from diffusers.image_processor import VaeImageProcessor

    n = len(nets_of(controlnet))

    def per_net(value, name):
        values = list(value) if isinstance(value, (list, tuple)) and n > 1 else [value]
        if len(values) == 1 and n > 1 and name != "control_image":
            values = values * n
        if len(values) != n:
            raise ValueError(f"{name} has {len(values)} entries for {n} ControlNets")
        return values

    processor = VaeImageProcessor(vae_scale_factor=vae_factor, do_convert_rgb=True, do_normalize=False)
    images = []
    for k, img in enumerate(per_net(image, "control_image")):
        try:
            tensor = processor.preprocess(img, height=height, width=width).to(torch.float32)
        except Exception as e:  # diffusers raises several kinds for what is not an image
            raise ValueError(f"control_image {k} is not an image the pipeline takes: {e}") from e
        if tensor.shape[0] not in (1, rows):
            raise ValueError(f"control_image {k} has {tensor.shape[0]} images for {rows} prompts")
        images.append(tensor.repeat_interleave(rows if tensor.shape[0] == 1 else 1, dim=0))
    scales = [float(s) for s in per_net(scale, "controlnet_conditioning_scale")]
    start, end = [float(s) for s in per_net(start, "control_guidance_start")], \
        [float(e) for e in per_net(end, "control_guidance_end")]
    for s, e in zip(start, end, strict=True):
        if not 0.0 <= s < e <= 1.0:
            raise ValueError(f"control_guidance_start {s} and _end {e} must satisfy 0 <= start < end <= 1")
    if not isinstance(guess_mode, bool):
        raise TypeError(f"guess_mode must be True or False, got {guess_mode!r}")
    return ControlInputs(images, scales, guess_mode, start, end)


def added(ctrl: ControlInputs, evals: int, cfg: bool) -> dict:
    """The added-conditioning entries of a request: the images (doubled for CFG unless in guess
    mode) and [evals, n] scales: scale x keep, keep 0 outside [start, end) of the evaluations."""
    prefix = GUESS if ctrl.guess_mode else COND
    out = {f"{prefix}{k}": torch.cat([img, img]) if cfg and not ctrl.guess_mode else img
           for k, img in enumerate(ctrl.images)}
    keep = [[1.0 - float(i / evals < s or (i + 1) / evals > e) for s, e in zip(ctrl.start, ctrl.end, strict=True)]
            for i in range(evals)]
    out["controlnet_scales"] = torch.tensor(keep) * torch.tensor(ctrl.scales)
    return out


def with_control(unet, controlnet):
    """The UNet denoiser with the ControlNets' residuals added (when the request has control)."""
    nets = nets_of(controlnet)

    def denoise(x, t, text, features, cond=None, added=None):
        images = sorted(k for k in (added or {}) if k.startswith(COND))
        rest = {k: v for k, v in (added or {}).items() if not k.startswith("controlnet")} or None
        down = mid = None
        if images:
            guess = images[0].startswith(GUESS)
            scales = added["controlnet_scales"].index_select(0, added["controlnet_step"].view(-1))[0]  # [n]
            cfg_guess = guess and x.shape[0] != added[images[0]].shape[0]
            x_c, text_c = (x.chunk(2)[1], text.chunk(2)[1]) if cfg_guess else (x, text)
            rest_c = rest if not cfg_guess or rest is None else {k: v.chunk(2)[1] for k, v in rest.items()}
            for k, (net, key) in enumerate(zip(nets, images, strict=True)):
                d, m = net(x_c, t, encoder_hidden_states=text_c, controlnet_cond=added[key].to(x.dtype),
                           conditioning_scale=1.0, guess_mode=guess, added_cond_kwargs=rest_c, return_dict=False)
                s = scales[k].to(x.dtype)
                d, m = [r * s for r in d], m * s
                down = d if down is None else [a + b for a, b in zip(down, d, strict=True)]
                mid = m if mid is None else mid + m
            if cfg_guess:  # the unconditional rows get no residual
                down = [torch.cat([torch.zeros_like(r), r]) for r in down]
                mid = torch.cat([torch.zeros_like(mid), mid])
        return unet(x, t, encoder_hidden_states=text, timestep_cond=cond, added_cond_kwargs=rest,
                    down_block_additional_residuals=down, mid_block_additional_residual=mid, return_dict=False)[0], None

    return denoise
