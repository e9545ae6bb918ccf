from clockwork_engine.sampler.graphs import GraphSampler, RequestInputs, release_device_memory
from clockwork_engine.sampler.guard import HostSyncError, NoHostSync
from clockwork_engine.sampler.loop import run
from clockwork_engine.sampler.solver import TEXT_TO_IMAGE, NoiseStream, SolverTable, Start, update
from clockwork_engine.sampler.steps import adaptor_denoiser, split_denoiser, step, unet_denoiser
from clockwork_engine.sampler.tables import build_table, verify

__all__ = ["TEXT_TO_IMAGE", "GraphSampler", "HostSyncError", "NoHostSync", "NoiseStream", "RequestInputs",
           "SolverTable", "Start", "adaptor_denoiser", "build_table", "run", "split_denoiser", "step",
           "release_device_memory", "unet_denoiser", "update", "verify"]
