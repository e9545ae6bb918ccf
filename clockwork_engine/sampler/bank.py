"""Solver tables stacked into one, so that rows at different evaluations of different step
counts share one step call (continuous batching, serving/).

Row r of a batch reads evaluation index[r] = offset(its table) + its own evaluation: the
stacked table is an ordinary SolverTable whose columns are the tables' columns end to end,
their windows left-padded with zero coefficients to the widest (history is oldest first, so
a zero on an older slot reads nothing) and, where one clips its x0 prediction and another
does not, the other's clip coefficients zero.
"""

from __future__ import annotations

import torch

from clockwork_engine.sampler.solver import SolverTable


class TableBank:
    def __init__(self, device):
        self.device = device
        self.tables: dict = {}  # key -> SolverTable, in the order added
        self.offsets: dict = {}
        self.table: SolverTable | None = None  # the stacked table the step programs read
        self.version = 0  # bumped whenever `table` is rebuilt (programs bound to it are stale)

    def add(self, key, table: SolverTable, keep: set) -> int:
        """The offset of `key`'s table, stacking it in if new (tables not in `keep`, the keys
        rows still use, are dropped then)."""
        if key not in self.tables:
            if table.start.blend:
                raise ValueError("4-channel inpainting's latent blend is not batched across requests")
            self.tables = {k: t for k, t in self.tables.items() if k in keep}
            self.tables[key] = table
            self._stack()
        return self.offsets[key]

    def _stack(self):
        tables = list(self.tables.values())
        window = max(t.window for t in tables)
        vectors = max(t.vectors for t in tables)
        ranges = {t.clip[2] for t in tables if t.clip is not None}
        if len(ranges) > 1:
            raise ValueError(f"tables clip their x0 prediction to different ranges {sorted(ranges)}")
        dtypes = {t.timesteps.dtype for t in tables}
        ts_dtype = dtypes.pop() if len(dtypes) == 1 else torch.float64
        coeffs, p, q, timesteps = [], [], [], []
        offset, self.offsets = 0, {}
        for key, t in self.tables.items():
            self.offsets[key] = offset
            offset += t.num_steps
            c = torch.zeros(t.num_steps, window, vectors, dtype=torch.float32, device=self.device)
            c[:, window - t.window:, : t.vectors] = t.coeffs.to(self.device)
            coeffs.append(c)
            zero = torch.zeros(t.num_steps, dtype=torch.float32, device=self.device)
            p.append(zero if t.clip is None else t.clip[0].to(self.device))
            q.append(zero if t.clip is None else t.clip[1].to(self.device))
            timesteps.append(t.timesteps.to(self.device, ts_dtype))
        clip = (torch.cat(p), torch.cat(q), ranges.pop()) if ranges else None
        first = tables[0]
        self.table = SolverTable(torch.cat(timesteps), torch.cat([t.in_div.to(self.device) for t in tables]),
                                 torch.cat(coeffs), clip, None, first.init_noise_sigma, first.steps)
        self.version += 1
