"""The request scheduler: owns the waiting requests, the lanes and the batching policy; a
lane (lane.py) executes one batch step; both run on the model runner (../runner.py) through
its public methods.

  policy "step"     step-level continuous batching: at every step boundary a waiting request
                    joins the running batch of its lane when its rows fit and its step kinds
                    line up with the lane's (clockwork: only at the clock's full ticks), and
                    leaves when its last step is done. Step counts may differ within a lane.
  policy "request"  request-level batching: requests waiting together start together; a
                    lane takes no one new until it is empty.

A lane holds compatible requests: same height, width, mode, CFG on or off and LoRA set (fused
before each of its ticks). FIFO within a lane; lanes take turns, one tick each. At most
config.max_queue images wait: beyond that submit() raises QueueFull at once. A request past its
deadline or cancelled (Future.cancel()) is dropped at the next step boundary. Joining prompts
are encoded in one call, finishing rows decoded in one. A row's image does not depend on its
neighbours (every op in the step is per row); only the float summation order of a larger batch
differs from the request alone (tests/test_serving_scheduler.py checks 1e-4).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
import time
from concurrent.futures import Future

import torch

from clockwork_engine.conditioning import encoders
from clockwork_engine.request import DeadlineExceeded, GenerationRequest, NonFiniteError, out_of_memory
from clockwork_engine.serving.jobs import Job, QueueFull, jobs_of
from clockwork_engine.serving.lane import Lane, Row

log = logging.getLogger("clockwork_engine.serving")


class BatchScheduler:
    def __init__(self, runner, policy: str | None = None):
        cfg = runner.config
        self.runner = runner
        self.policy = policy or cfg.batching
        if self.policy not in ("request", "step"):
            raise ValueError(f"policy must be 'request' or 'step', got {self.policy!r}")
        self.buckets = tuple(cfg.batch_buckets)
        self.max_queue = cfg.max_queue
        self._waiting: collections.deque[Job] = collections.deque()
        self._lanes: dict[tuple, Lane] = {}
        self._cond = threading.Condition()
        self._closed = False
        self.tick_hooks: list = []  # each called with the rows of every batch step (metrics)
        self.counts = collections.Counter()  # outcome -> requests
        self._thread = threading.Thread(target=self._loop, name="clockwork-batcher", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ the callers' side
    def lanes(self) -> dict:
        """{lane key: Lane} of the lanes open now."""
        return dict(self._lanes)

    def accepts(self, req: GenerationRequest) -> bool:
        """Text-to-image without a step callback, on a model without attention reuse, and no
        more images than the largest bucket; anything else runs alone (Engine.run_alone)."""
        return (req.edit is None and req.control is None and req.callback is None and self.runner.reuse is None
                and req.rows <= self.buckets[-1])

    def submit(self, req: GenerationRequest) -> Future:
        """Queue a checked request; the Future gives what generate() returns. Raises QueueFull."""
        if not self.accepts(req):
            raise ValueError("this request is not batched (an edit, a callback or attention reuse): "
                             "run it with Engine.run_alone")
        cfg = self.runner.uses_cfg(req.guidance)
        # step_kinds builds the table: a scheduler's error is the caller's
        kinds = self.runner.step_kinds(req.steps, req.mode, size=(req.height, req.width))
        point = self.runner.operating_point(req.steps, req.loras) if req.mode == "clockwork" else None  # loads it
        job = Job(req, Future(), (req.height, req.width, req.mode, cfg, point, req.loras), kinds)
        with self._cond:
            if self._closed:
                raise RuntimeError("the scheduler is closed")
            if self.queue_depth() + req.rows > self.max_queue:
                self.counts["queue_full"] += 1
                raise QueueFull(f"the queue is full ({self.max_queue} images waiting); retry later")
            self._waiting.append(job)
            self.counts["submitted"] += 1
            self._cond.notify()
        return job.future

    def queue_depth(self) -> int:
        """Images waiting to start."""
        return sum(job.request.rows for job in self._waiting)

    def running(self) -> int:
        """Images being sampled."""
        return sum(len(lane.rows) for lane in list(self._lanes.values()))

    def close(self):
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout=30)

    # ------------------------------------------------------------------ the scheduler thread
    def _loop(self):
        while True:
            try:
                if not self._serve_once():
                    return
            except Exception as e:  # noqa: BLE001  (a bug of ours must not stop the service)
                log.exception("the batch scheduler failed; its running requests get the error")
                with self._cond:
                    for lane in self._lanes.values():
                        for job in jobs_of(lane.rows):
                            self._fail(job, e)
                        lane.clear()

    def _serve_once(self) -> bool:
        """One pass: expire, admit, one tick of every lane. False once closed."""
        with self._cond:
            while not self._closed and not self._waiting and not self.running():
                self._cond.wait()
            if self._closed:
                self._fail_all(RuntimeError("the scheduler was closed"))
                return False
            self._expire_waiting()
            joining = self._take_joining()
        for lane, jobs in joining.items():
            self._join(lane, jobs)
        for lane in list(self._lanes.values()):
            if lane.rows:
                self._tick(lane)
            self._drop_gone(lane)
        self._forget_idle_lanes()
        return True

    def _forget_idle_lanes(self, keep: int = 4):
        """Empty lanes keep their programs for the next request of their shape; the oldest beyond `keep` go."""
        with self._cond:
            idle = [key for key, lane in self._lanes.items() if not lane.rows
                    and not any(j.lane_key == key for j in self._waiting)]
            for key in idle[: max(0, len(idle) - keep)]:
                del self._lanes[key]

    def _expire_waiting(self):
        now = time.monotonic()
        for job in [j for j in self._waiting if j.future.cancelled() or j.request.expired(now)]:
            self._waiting.remove(job)
            self._fail(job, None)

    def _take_joining(self) -> dict[Lane, list[Job]]:
        """The waiting jobs that join their lanes at this boundary (FIFO within a lane)."""
        joining: dict[Lane, list[Job]] = {}
        held: set[tuple] = set()
        for job in list(self._waiting):
            if job.lane_key in held:
                continue
            lane = self._lanes.get(job.lane_key)
            if lane is None:
                lane = self._lanes[job.lane_key] = Lane(self.runner, job.lane_key, self.buckets)
            taken = sum(j.request.rows for j in joining.get(lane, []))
            fits = len(lane.rows) + taken + job.request.rows <= lane.capacity
            free = not lane.rows or self.policy == "step"
            if fits and free and lane.can_join(job.kinds):
                self._waiting.remove(job)
                joining.setdefault(lane, []).append(job)
            else:
                held.add(job.lane_key)
        return joining

    def _join(self, lane: Lane, jobs: list[Job]):
        """Encode the joining prompts together, draw each request's noise, place the rows."""
        runner = self.runner
        rows, tables = [], {}
        for negative_given in (False, True):
            group = [j for j in jobs if j.request.negative_given == negative_given]
            if not group:
                continue
            try:
                prompts = [p for j in group for p in j.request.prompts]
                negatives = [n for j in group for n in j.request.negatives]
                first = group[0].request
                # With LoRAs loaded, the prompts are encoded under the lane's set (a text encoder's
                # LoRA changes them), holding the model's lock as the steps do.
                with runner.lock if runner.lora.loaded else contextlib.nullcontext():
                    runner.lora.use(lane.loras)
                    text, added = runner.encode(prompts, negatives, lane.cfg, first.height, first.width,
                                                negative_given)
            except Exception as e:  # noqa: BLE001  (a failure of these requests, not of the service)
                for job in group:
                    self._fail(job, e)
                continue
            total, start = len(prompts), 0
            for job in group:
                n = job.request.rows
                picks = list(range(start, start + n))
                if lane.cfg:
                    picks = picks + [total + p for p in picks]
                start += n
                try:
                    rows += self._rows(job, lane, text[picks], encoders.rows(added, picks), tables)
                except Exception as e:  # noqa: BLE001
                    self._fail(job, e)
        if rows:
            try:
                with runner.lock:
                    lane.admit(rows, tables)
            except Exception as e:  # noqa: BLE001
                for job in jobs_of(rows):
                    self._fail(job, e)

    def _rows(self, job: Job, lane: Lane, text, added, tables) -> list[Row]:
        runner, req = self.runner, job.request
        table = runner.table(req.steps, size=(req.height, req.width))
        tables[(req.steps,)] = table
        if lane.point is not None:
            lane.point.warn_off_point(req.steps)
        inputs = runner.request_inputs(table, req.height, req.width, req.guidance, req.seeds, lane.cfg, text, added)
        n = req.rows
        picks = (lambda j: [j, n + j]) if lane.cfg else (lambda j: [j])
        added = inputs.added or {}
        return [Row(job, j, (req.steps,), job.kinds, inputs.latents[j], inputs.text[picks(j)], inputs.guidance[j],
                    None if inputs.noise is None else inputs.noise[:, j],
                    {k: v[picks(j)] for k, v in added.items()}) for j in range(n)]

    def _tick(self, lane: Lane):
        try:
            with self.runner.lock, torch.no_grad():
                self.runner.lora.use(lane.loras)  # a lane's rows share one LoRA set
                n = len(lane.rows)
                finished = lane.step()
        except Exception as e:  # noqa: BLE001  (fail this lane's requests; the service goes on)
            for job in jobs_of(lane.rows):
                self._fail(job, e)
            lane.clear()
            return
        for hook in self.tick_hooks:
            hook(n)
        self._finish(finished)

    def _finish(self, finished: list[tuple[Row, torch.Tensor]]):
        by_output: dict[str, list] = {}
        for row, x in finished:
            if row.job.future.done():
                continue
            if not torch.isfinite(x).all():
                self._fail(row.job, NonFiniteError("the sampler produced NaN/Inf latents (check the model weights "
                                                   "and guidance_scale)"))
                continue
            by_output.setdefault(row.job.request.output, []).append((row, x))
        for output, items in by_output.items():
            final = torch.stack([x for _, x in items])
            try:
                images = final if output == "latent" else self.runner.decode(final, output)
            except Exception as e:  # noqa: BLE001
                for row, _ in items:
                    self._fail(row.job, e)
                continue
            for (row, _), image in zip(items, images, strict=True):
                if row.job.place(row.index, image, output):
                    self.counts["ok"] += 1

    def _drop_gone(self, lane: Lane):
        """Rows of requests that failed, were cancelled or ran past their deadline leave."""
        now = time.monotonic()
        gone = set()
        for s, row in enumerate(lane.rows):
            job = row.job
            if job.future.cancelled() or (not job.future.done() and job.request.expired(now)):
                self._fail(job, None)
            if job.future.done():
                gone.add(s)
        if gone:
            with self.runner.lock:
                lane.drop(gone)

    def _fail(self, job: Job, error: BaseException | None):
        """error None: cancelled or past its deadline, whichever it is."""
        if job.ended:
            return
        job.ended = True
        if isinstance(error, torch.OutOfMemoryError):  # the lane's batch did not fit: say which request
            error = out_of_memory(job.request, self.runner.device)
        if job.future.cancelled():
            self.counts["cancelled"] += 1
            return
        if error is None:
            error = DeadlineExceeded("the request ran past its time limit and was dropped")
            self.counts["timeout"] += 1
        else:
            self.counts["error"] += 1
        job.fail(error)

    def _fail_all(self, error: BaseException):
        for job in list(self._waiting) + [row.job for lane in self._lanes.values() for row in lane.rows]:
            job.fail(error)
        self._waiting.clear()
        for lane in self._lanes.values():
            lane.clear()
