from .graphs import GraphSampler
from .guard import HostSyncError, NoHostSync
from .loop import run
from .solver import SolverTable, build_table
from .steps import adaptor_denoiser, solver_update, split_denoiser, step, unet_denoiser

__all__ = ["GraphSampler", "HostSyncError", "NoHostSync", "SolverTable", "adaptor_denoiser", "build_table", "run",
           "solver_update", "split_denoiser", "step", "unet_denoiser"]
