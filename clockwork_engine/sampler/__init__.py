from .graphs import GraphSampler, RequestInputs, release_device_memory
from .guard import HostSyncError, NoHostSync
from .loop import run
from .solver import TEXT_TO_IMAGE, NoiseStream, SolverTable, Start, build_table, update, verify
from .steps import adaptor_denoiser, split_denoiser, step, unet_denoiser

__all__ = ["TEXT_TO_IMAGE", "GraphSampler", "HostSyncError", "NoHostSync", "NoiseStream", "RequestInputs",
           "SolverTable", "Start", "adaptor_denoiser", "build_table", "run", "split_denoiser", "step",
           "release_device_memory", "unet_denoiser", "update", "verify"]
