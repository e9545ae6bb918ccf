"""FLOPs of a ControlNet beside the UNet, in full mode and under clockwork: on a full step the
ControlNet runs whole; on an adaptor step only its conv_in, conditioning embedding and first
`cut` down blocks with their zero convolutions (the residuals of the skips H_out consumes,
conditioning/control.py), so most of the ControlNet is skipped with the UNet's L.

    clockwork flops --arch sd15 --steps 8 --clock 2 --controlnet
"""

from __future__ import annotations

import torch

from clockwork_engine.clockwork.clock import Clock


def count(unet_config: dict, text_tokens: int, text_dim: int, cut: int, cfg_batch: int = 2) -> tuple[dict, dict]:
    """(the ControlNet's ops on a full step, its ops on an adaptor step), ControlNetModel.from_unet
    of the architecture (as SD v1.5's ControlNets are), at the config's size, CFG batch."""
    from diffusers import ControlNetModel, UNet2DConditionModel
    from diffusers.models.attention_processor import AttnProcessor

    from clockwork_engine.conditioning import control
    from clockwork_engine.tools.counting import _count, example_inputs

    with torch.device("meta"):
        unet = UNet2DConditionModel(**unet_config).eval()
        net = ControlNetModel.from_unet(unet).eval()
        net.set_attn_processor(AttnProcessor())  # plain bmm attention: every matmul is counted
        x, t, text, added = example_inputs(unet_config, cfg_batch, text_tokens, text_dim)
        image = torch.randn(cfg_batch, 3, x.shape[-2] * 8, x.shape[-1] * 8)
        n_out = sum(len(b.resnets) + (b.downsamplers is not None) for b in unet.down_blocks[:cut])
        with torch.no_grad():
            full = _count(lambda: net(x, t, text, image, added_cond_kwargs=added, return_dict=False))
            prefix = _count(lambda: control._prefix(net, x, t, text, image, added, cut, n_out, False))
    return full, prefix


def add_to(result: dict, unet_config: dict, text_tokens: int, text_dim: int) -> dict:
    """result (count_arch's) with "controlnet": the per-image FLOPs of UNet + ControlNet, full
    and clockwork (the adaptor's cost included, the ControlNet's skipped blocks left out)."""
    from clockwork_engine.tools.counting import _conventions

    full_ops, prefix_ops = count(unet_config, text_tokens, text_dim, result["cut"], result["cfg_batch"])
    steps = result["steps"]
    n_adaptor = sum(Clock(every=result["clock_every"]).schedule(steps))
    out = {}
    for conv in ("paper", "full"):
        r = result[conv]
        cn, cn_prefix = _conventions(full_ops)[conv] / 1e12, _conventions(prefix_ops)[conv] / 1e12
        baseline = steps * (r["full_step_tflops"] + cn)
        clockwork = (steps - n_adaptor) * (r["full_step_tflops"] + cn) + \
            n_adaptor * (r["adaptor_step_tflops"] + cn_prefix)
        out[conv] = {"controlnet_full_step_tflops": cn, "controlnet_adaptor_step_tflops": cn_prefix,
                     "baseline_tflops_per_image": baseline, "clockwork_tflops_per_image": clockwork,
                     "saving": 1 - clockwork / baseline}
    return {**result, "controlnet": out}
