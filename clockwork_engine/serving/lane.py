"""A lane: the rows of compatible requests (same size, mode, CFG on or off and, for clockwork,
the same operating point: the adaptor of their step count) sampled together,
one model call a tick for all of them; each row at its own evaluation of its own table.

State lives in static buffers sized to a bucket (1, 2, 4, ... rows, padded), so the step
programs stay shape-static (CUDA graphs, inductor): live rows occupy slots 0..n-1; under CFG
the row-doubled buffers (text, features, added conditioning) hold the row's negative at slot s
and its prompt at bucket + s, as diffusers orders a CFG batch. A program set (buffers and
programs) is built per (bucket, bank version); moving to another copies the live rows over.

Clockwork: the lane runs one step kind a tick, kind_at(tick) of the runner's clock, so a row
may join only where its own schedule lines up with the lane's from there on (with clock
every=2: at even ticks); its adaptor steps then fall on the lane's adaptor ticks, and its
first step, always full, fills its cached r_out.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import torch

from clockwork_engine.sampler.bank import TableBank
from clockwork_engine.sampler.graphs import StaticBuffers

ROW_DOUBLED = ("text", "features")  # [2B, ...] under CFG, as is each added conditioning tensor
PER_ROW = ("step", "x", "guidance", "noise")  # [B, ...]


@dataclass
class Row:
    """One image of a request inside a lane."""

    job: object  # the scheduler's Job
    index: int  # which image of the request
    table_key: tuple
    kinds: list[str]  # its own step kinds (Engine.schedule)
    x0: torch.Tensor  # [C, h, w] float32
    text: torch.Tensor  # [2, L, D] (negative, prompt) under CFG, else [1, L, D]
    guidance: torch.Tensor  # [] its guidance scale (1 under CFG for a scale <= 1)
    noise: torch.Tensor | None = None  # [E, C, h, w] the noise terms of a stochastic scheduler
    added: dict = field(default_factory=dict)  # the family's added conditioning: name -> [2 or 1, ...]
    k: int = 0  # evaluations done

    @property
    def done(self) -> bool:
        return self.k == len(self.kinds)


class Lane:
    def __init__(self, runner, key: tuple, buckets: tuple[int, ...]):
        """key: the scheduler's lane key, (height, width, mode, CFG on, operating point or None[,
        LoRA set: ((name, scale), ...), default none])."""
        self.runner, self.buckets = runner, buckets
        _, _, self.mode, self.cfg, self.point, *rest = key
        self.loras = rest[0] if rest else ()
        self.clock = runner.config.clock()
        self.bank = TableBank(runner.device)
        self.rows: list[Row] = []
        self.tick = 0
        self._sets: OrderedDict[tuple, tuple[StaticBuffers, dict]] = OrderedDict()  # program sets kept
        self._current: tuple | None = None  # key into _sets

    @property
    def capacity(self) -> int:
        return self.buckets[-1]

    def kind_at(self, tick: int) -> str:
        if self.mode == "full":
            return "full"
        return "clockwork.adaptor" if self.clock.is_adaptor_step(tick) else "clockwork.full"

    def can_join(self, kinds: list[str]) -> bool:
        start = self.tick if self.rows else 0
        return all(kind == self.kind_at(start + k) for k, kind in enumerate(kinds))

    # ------------------------------------------------------------------ rows in and out
    def admit(self, rows: list[Row], tables: dict):
        """Place rows in free slots (tables: table_key -> SolverTable)."""
        if not self.rows:
            self.tick = 0
        if len(self.rows) + len(rows) > self.capacity:
            raise ValueError(f"a lane holds at most {self.capacity} rows")
        keep = {r.table_key for r in self.rows + rows}
        for row in rows:
            self.bank.add(row.table_key, tables[row.table_key], keep)
        self._use(self._bucket(len(self.rows) + len(rows)), rows[0])
        bufs = self.buffers
        bucket = bufs.x.shape[0]
        for row in rows:
            s = len(self.rows)
            bufs.x[s].copy_(row.x0)
            bufs.history[:, :, s].zero_()
            bufs.noise[s].zero_()
            bufs.guidance[s] = row.guidance
            slots = [s, bucket + s] if self.cfg else [s]
            for j, slot in enumerate(slots):
                bufs.text[slot].copy_(row.text[j])
                for name, value in row.added.items():
                    bufs.added[name][slot].copy_(value[j])
            self.rows.append(row)

    def drop(self, leaving: set[int]):
        """Remove the rows at these slots, compacting the rest to the front (order kept)."""
        keep = [s for s in range(len(self.rows)) if s not in leaving]
        if len(keep) == len(self.rows):
            return
        bufs = self.buffers
        _gather(bufs, bufs, keep, self.cfg)
        self.rows = [self.rows[s] for s in keep]
        if not self.rows:
            self.tick = 0
        elif self._bucket(len(self.rows)) < bufs.x.shape[0]:
            self._use(self._bucket(len(self.rows)), self.rows[0])

    def clear(self):
        self.rows, self.tick = [], 0

    # ------------------------------------------------------------------ one tick
    def step(self) -> list[tuple[Row, torch.Tensor]]:
        """One model call for every live row; returns the rows that finished with their final
        latents [C, h, w] (they leave the lane)."""
        kind = self.kind_at(self.tick)
        if any(row.kinds[row.k] != kind for row in self.rows):  # join() keeps this from happening
            raise RuntimeError("a row's step kind differs from its lane's")
        bufs, programs = self._sets[self._current]
        bucket = bufs.x.shape[0]
        offsets = self.bank.offsets
        index = [offsets[r.table_key] + r.k for r in self.rows]
        bufs.step.copy_(torch.tensor(index + [index[0]] * (bucket - len(index))))
        for s, row in enumerate(self.rows):
            if row.noise is not None:
                bufs.noise[s].copy_(row.noise[row.k])
        programs[kind].run()
        self.tick += 1
        finished = []
        for s, row in enumerate(self.rows):
            row.k += 1
            if row.done:
                finished.append(s)
        results = [(self.rows[s], bufs.x[s].clone()) for s in finished]
        self.drop(set(finished))
        return results

    # ------------------------------------------------------------------ buffers and programs
    def programs(self) -> list:
        """Every step program of the lane's kept program sets."""
        return [p for _, programs in self._sets.values() for p in programs.values()]

    @property
    def buffers(self) -> StaticBuffers:
        return self._sets[self._current][0]

    def _bucket(self, n: int) -> int:
        return next(b for b in self.buckets if b >= n)

    def _use(self, bucket: int, like: Row):
        """Switch to the program set for (bucket, bank version), copying the live rows over."""
        key = (bucket, self.bank.version)
        if key == self._current:
            return
        if key not in self._sets:
            self._sets[key] = self._build(bucket, like)
            while len(self._sets) > len(self.buckets):  # every bucket's set is kept; stale versions go below
                oldest = next(k for k in self._sets if k != self._current)
                del self._sets[oldest]
        if self._current is not None and self.rows:
            _gather(self._sets[key][0], self.buffers, list(range(len(self.rows))), self.cfg)
        self._current = key
        for stale in [k for k in self._sets if k[1] != self.bank.version]:
            del self._sets[stale]

    def _build(self, bucket: int, like: Row) -> tuple[StaticBuffers, dict]:
        runner, table = self.runner, self.bank.table
        device, dtype = runner.device, runner.model.dtype
        doubled = 2 * bucket if self.cfg else bucket
        x_shape = (bucket,) + tuple(like.x0.shape)
        features = None
        if self.mode == "clockwork":
            shape = self.point.split.feature_shape(doubled, like.text.shape[1], *x_shape[2:])
            features = torch.zeros(shape, dtype=dtype, device=device)
        added = {name: torch.zeros((doubled,) + tuple(v.shape[1:]), dtype=dtype, device=device)
                 for name, v in like.added.items()}
        bufs = StaticBuffers(
            step=torch.zeros(bucket, dtype=torch.long, device=device),
            x=torch.zeros(x_shape, dtype=torch.float32, device=device),
            history=torch.zeros((table.window, table.vectors) + x_shape, dtype=torch.float32, device=device),
            features=features,
            text=torch.zeros((doubled,) + tuple(like.text.shape[1:]), dtype=dtype, device=device),
            guidance=torch.ones(bucket, dtype=torch.float32, device=device),
            noise=torch.zeros(x_shape, dtype=torch.float32, device=device), added=added or None)
        kinds = {"full"} if self.mode == "full" else {"clockwork.full", "clockwork.adaptor"}
        step_fns = {kind: runner.step_fn(kind, table, bufs, self.cfg, self.point) for kind in kinds}
        programs = runner.graphs.build(step_fns, bufs, kinds, bufs.text.clone())
        bufs.history.zero_()  # the programs' dry runs wrote into it; rows copied in rely on zeros
        return bufs, programs


def _gather(dst: StaticBuffers, src: StaticBuffers, slots: list[int], cfg: bool):
    """Rows `slots` of src into slots 0..len-1 of dst (dst may be src: index_select copies first)."""
    n = len(slots)
    if n == 0:
        return
    index = torch.tensor(slots, device=src.x.device)
    for name in PER_ROW:
        getattr(dst, name)[:n] = getattr(src, name).index_select(0, index)
    # The windows may differ (tables stacked in or dropped from the bank): the newest slots are
    # copied; a wider dst keeps zeros in its older slots, which the live rows' tables never read.
    k = min(src.history.shape[0], dst.history.shape[0])
    v = min(src.history.shape[1], dst.history.shape[1])
    dst.history[dst.history.shape[0] - k:, :v, :n] = src.history[src.history.shape[0] - k:, :v].index_select(2, index)
    b_src, b_dst = src.x.shape[0], dst.x.shape[0]
    doubled = [(getattr(src, name), getattr(dst, name)) for name in ROW_DOUBLED]
    doubled += [(src.added[name], dst.added[name]) for name in src.added or {}]
    for s, d in doubled:
        if s is None:
            continue
        d[:n] = s.index_select(0, index)
        if cfg:
            d[b_dst:b_dst + n] = s.index_select(0, index + b_src)
