from .graphs import GraphSampler
from .guard import HostSyncError, NoHostSync
from .loop import run
from .solver import SolverTable, build_table, draw_noise, update, verify
from .steps import adaptor_denoiser, split_denoiser, step, unet_denoiser

__all__ = ["GraphSampler", "HostSyncError", "NoHostSync", "SolverTable", "adaptor_denoiser", "build_table",
           "draw_noise", "run", "split_denoiser", "step", "unet_denoiser", "update", "verify"]
