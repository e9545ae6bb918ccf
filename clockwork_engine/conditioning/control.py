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


def residuals(nets, x, t, text, added, prefix: tuple[int, int] | None = None):
    """(down residuals, mid residual, the added conditioning without the control entries), the
    ControlNets' residuals summed and scaled for this evaluation; (None, None, rest) without
    control. prefix (levels, count): only the first `count` down residuals, from the ControlNets'
    conv_in and first `levels` down blocks (what the run part of a clockwork split consumes)."""
    images = sorted(k for k in (added or {}) if k.startswith(COND))
    rest = {k: v for k, v in (added or {}).items() if not k.startswith("controlnet")} or None
    if not images:
        return None, None, rest
    guess = images[0].startswith(GUESS)
    scales = added["controlnet_scales"].index_select(0, added["controlnet_step"].view(-1))[0]  # [n]
    cfg_guess = guess and x.shape[0] != added[images[0]].shape[0]
    x_c, text_c = (x.chunk(2)[1], text.chunk(2)[1]) if cfg_guess else (x, text)
    rest_c = rest if not cfg_guess or rest is None else {k: v.chunk(2)[1] for k, v in rest.items()}
    down = mid = None
    for k, (net, key) in enumerate(zip(nets, images, strict=True)):
        image = added[key].to(x.dtype)
        if prefix is None:
            d, m = net(x_c, t, encoder_hidden_states=text_c, controlnet_cond=image, conditioning_scale=1.0,
                       guess_mode=guess, added_cond_kwargs=rest_c, return_dict=False)
        else:
            d, m = _prefix(net, x_c, t, text_c, image, rest_c, *prefix, guess), None
        s = scales[k].to(x.dtype)
        d = [r * s for r in d]
        down = d if down is None else [a + b for a, b in zip(down, d, strict=True)]
        if m is not None:
            mid = m * s if mid is None else mid + m * s
    if cfg_guess:  # the unconditional rows get no residual
        down = [torch.cat([torch.zeros_like(r), r]) for r in down]
        mid = None if mid is None else torch.cat([torch.zeros_like(mid), mid])
    return down, mid, rest


def _prefix(net, x, t, text, image, added, levels: int, count: int, guess: bool) -> list:
    """ControlNetModel.forward up to its first `levels` down blocks: the first `count` residuals."""
    from clockwork_engine.clockwork.unet_split import _call_block

    cfg = net.config
    if net.class_embedding is not None or cfg.addition_embed_type not in (None, "text_time") or \
            cfg.global_pool_conditions:
        raise ValueError("clockwork runs ControlNets without class or text embeddings and global pooling only")
    timesteps = (t[None] if t.dim() == 0 else t).expand(x.shape[0])
    emb = net.time_embedding(net.time_proj(timesteps).to(x.dtype), None)
    if cfg.addition_embed_type == "text_time":  # SDXL's pooled text and time ids
        text_embeds, time_ids = added["text_embeds"], added["time_ids"]
        time_embeds = net.add_time_proj(time_ids.flatten()).reshape(text_embeds.shape[0], -1)
        emb = emb + net.add_embedding(torch.concat([text_embeds, time_embeds], dim=-1).to(emb.dtype))
    h = net.conv_in(x) + net.controlnet_cond_embedding(image)
    res = (h,)
    for block in net.down_blocks[:levels]:
        h, r = _call_block(block, h, emb, text)
        res += r
    out = [block(r) for r, block in zip(res[:count], net.controlnet_down_blocks, strict=False)]
    if guess:
        scales = torch.logspace(-1, 0, len(net.controlnet_down_blocks) + 1, device=x.device)
        out = [r * s for r, s in zip(out, scales, strict=False)]
    return out


def with_control(unet, controlnet):
    """The UNet denoiser with the ControlNets' residuals added (when the request has control)."""
    nets = nets_of(controlnet)

    def denoise(x, t, text, features, cond=None, added=None):
        down, mid, rest = residuals(nets, x, t, text, added)
        return unet(x, t, encoder_hidden_states=text, timestep_cond=cond, added_cond_kwargs=rest,
                    down_block_additional_residuals=down, mid_block_additional_residual=mid, return_dict=False)[0], None

    return denoise


def clockwork_denoisers(split, adaptor, controlnet) -> dict:
    """Clockwork's step kinds with ControlNets: a full step adds every residual (H_in's skips,
    L's and the mid block's); an adaptor step runs only the ControlNets' conv_in and first
    `cut` down blocks, for the skips H_out consumes."""
    if split.cut == 0:
        raise ValueError("clockwork with a ControlNet runs at cut >= 1 (cut 0 shares conv_in's skip with L)")
    nets = nets_of(controlnet)
    blocks = split.unet.down_blocks[: split.cut]
    n_out = sum(len(b.resnets) + (b.downsamplers is not None) for b in blocks)  # conv_in's, less r_in's

    def add(skips, down):
        return skips if down is None else tuple(s + r for s, r in zip(skips, down, strict=True))

    def full(x, t, text, features, cond=None, added=None):
        down, mid, rest = residuals(nets, x, t, text, added)
        hin = split.h_in(x, t, text, cond, rest)
        r_out = split.low(hin.r_in, hin.emb, text, control=None if down is None else (down[n_out:], mid))
        return split.h_out(r_out, add(hin.skips, None if down is None else down[:n_out]), hin.emb, text), r_out

    def adapt(x, t, text, r_out_prev, cond=None, added=None):
        down, _, rest = residuals(nets, x, t, text, added, prefix=(split.cut, n_out))
        hin = split.h_in(x, t, text, cond, rest)
        r_out = adaptor(hin.r_in, r_out_prev, hin.emb, text)
        return split.h_out(r_out, add(hin.skips, down), hin.emb, text), r_out

    return {"clockwork.full": full, "clockwork.adaptor": adapt}
