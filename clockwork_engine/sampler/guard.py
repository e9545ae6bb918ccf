"""A guard that fails a step function which synchronises with the host.

On a GPU, .item(), bool(tensor), data-dependent shapes (nonzero, masked_select) stall the
stream and break CUDA-graph capture. The same calls go through these aten ops on any
device, so the guard catches them on the CPU too.
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

HOST_SYNC_OPS = {
    torch.ops.aten._local_scalar_dense.default,  # .item(), int(t), float(t), bool(t)
    torch.ops.aten.is_nonzero.default,  # if tensor:
    torch.ops.aten.nonzero.default,  # data-dependent output shape
    torch.ops.aten.masked_select.default,
    torch.ops.aten.unique_consecutive.default,
    torch.ops.aten._unique2.default,
}


class HostSyncError(RuntimeError):
    """A step function synchronised with the host."""


class NoHostSync(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in HOST_SYNC_OPS:
            raise HostSyncError(f"{func} synchronises with the host; a step function must not "
                                f"(no .item(), no Python branching on tensor values)")
        return func(*args, **(kwargs or {}))
