"""Shared pieces of every trainer (the demo's, the distillations'): resumable safetensors
checkpoints, loss plots, the cosine learning rate and min-SNR loss weights.

A checkpoint is a folder with model.safetensors (weights), optimizer.safetensors (the
optimizer's tensors, flattened) and state.json (step, losses, optimizer hyper-parameters,
the RNG state of the data stream is re-derived from the step).
"""

from __future__ import annotations

import json
import os

import torch
from safetensors.torch import load_file, save_file


def save_checkpoint(folder: str, model: torch.nn.Module, optimizer, step: int, losses: list[float]):
    os.makedirs(folder, exist_ok=True)
    opt_state = optimizer.state_dict()
    tensors = {
        f"{idx}.{name}": value.contiguous()
        for idx, per_param in opt_state["state"].items()
        for name, value in per_param.items()
        if torch.is_tensor(value)
    }
    tmp = os.path.join(folder, "tmp")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp + ".model")
    save_file(tensors, tmp + ".opt")
    with open(tmp + ".json", "w") as f:
        json.dump({"step": step, "losses": losses, "param_groups": opt_state["param_groups"]}, f)
    # Rename last so that an interrupted save never leaves a half-written checkpoint.
    os.replace(tmp + ".model", os.path.join(folder, "model.safetensors"))
    os.replace(tmp + ".opt", os.path.join(folder, "optimizer.safetensors"))
    os.replace(tmp + ".json", os.path.join(folder, "state.json"))


def load_checkpoint(folder: str, model: torch.nn.Module, optimizer) -> tuple[int, list[float]]:
    """Restore in place; returns (step, losses), or (0, []) when there is no checkpoint."""
    state_path = os.path.join(folder, "state.json")
    if not os.path.exists(state_path):
        return 0, []
    with open(state_path) as f:
        state = json.load(f)
    model.load_state_dict(load_file(os.path.join(folder, "model.safetensors")))
    flat = load_file(os.path.join(folder, "optimizer.safetensors"))
    per_param: dict[int, dict] = {}
    for key, value in flat.items():
        idx, name = key.split(".", 1)
        per_param.setdefault(int(idx), {})[name] = value
    optimizer.load_state_dict({"state": per_param, "param_groups": state["param_groups"]})
    return state["step"], state["losses"]


def load_with_ema(folder: str, model: torch.nn.Module, optimizer, ema: torch.nn.Module) -> tuple[int, list[float]]:
    """load_checkpoint of a run that keeps an EMA of its weights in <folder>/ema (0, [] if none)."""
    step, losses = load_checkpoint(folder, model, optimizer)
    if step:
        load_checkpoint(os.path.join(folder, "ema"), ema, torch.optim.SGD(ema.parameters(), lr=0))
    return step, losses


def save_with_ema(folder: str, model: torch.nn.Module, optimizer, ema: torch.nn.Module, step: int,
                  losses: list[float]):
    save_checkpoint(folder, model, optimizer, step, losses)
    save_checkpoint(os.path.join(folder, "ema"), ema, torch.optim.SGD(ema.parameters(), lr=0), step, [])


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float, step: int):
    """ema's weights move toward model's; the decay warms up as min(decay, (1 + step) / (10 + step))."""
    d = min(decay, (1 + step) / (10 + step))
    for pe, p in zip(ema.parameters(), model.parameters(), strict=True):
        pe.lerp_(p, 1 - d)


def plot_losses(losses: list[float], path: str, title: str, smooth: int = 50):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(losses, alpha=0.3, label="per step")
    if len(losses) >= smooth:
        kernel = torch.ones(smooth) / smooth
        avg = torch.nn.functional.conv1d(torch.tensor(losses)[None, None], kernel[None, None])[0, 0]
        ax.plot(range(smooth - 1, len(losses)), avg.tolist(), label=f"mean of {smooth}")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def cosine_lr(step: int, total: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * 0.5 * (1 + torch.cos(torch.tensor(progress * torch.pi)).item())


def optimizer_step(opt, loss: torch.Tensor, lr: float) -> float:
    """One step of opt on loss at learning rate lr; returns the loss's value."""
    for g in opt.param_groups:
        g["lr"] = lr
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.item()


def min_snr_weights(alphas_cumprod: torch.Tensor, t: torch.Tensor, gamma: float = 5.0) -> torch.Tensor:
    """Min-SNR-gamma weights of epsilon-loss terms at timesteps t (Hang et al. 2023)."""
    snr = alphas_cumprod[t] / (1 - alphas_cumprod[t])
    return torch.clamp(snr, max=gamma) / snr
