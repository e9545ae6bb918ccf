"""A request as the request scheduler holds it (Job), and the error of a full queue."""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, field

import torch

from clockwork_engine.request import GenerationRequest


class QueueFull(RuntimeError):
    """The queue is full: the request was refused at once (retry later)."""


@dataclass
class Job:
    request: GenerationRequest
    future: Future
    lane_key: tuple  # (height, width, mode, cfg on, clockwork's operating point or None, LoRA set)
    kinds: list[str]  # the step kinds of each of its rows (runner.step_kinds)
    images: list = field(init=False)  # one a row, filled as rows finish
    rows_left: int = field(init=False)
    ended: bool = False  # answered, failed or cancelled, and counted

    def __post_init__(self):
        self.images, self.rows_left = [None] * self.request.rows, self.request.rows

    def place(self, index: int, image, output: str) -> bool:
        """Row `index`'s image; True when it was the last one and the request is answered."""
        self.images[index] = image
        self.rows_left -= 1
        if self.rows_left or self.future.done():
            return False
        self.future.set_result(self.request.result(self.images if output == "pil" else torch.stack(self.images)))
        self.ended = True
        return True

    def fail(self, error: BaseException):
        if not self.future.done():
            self.future.set_exception(error)


def jobs_of(rows) -> list[Job]:
    """The jobs these rows belong to, each once."""
    return list({id(r.job): r.job for r in rows}.values())
