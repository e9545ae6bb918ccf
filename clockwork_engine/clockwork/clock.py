"""Clock schedules: which steps run the adaptor instead of the UNet's low-res middle L.

Step indices count from 0 (the paper counts from 1: its {2, 4, 6, 8} of 8 is {1, 3, 5, 7}
here). Step 0 is always a full step: the cache holds no r_out(t+1) yet.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Clock:
    every: int = 2  # adaptor on steps i with i % every == every - 1; 0 or 1: never
    adaptor_steps: frozenset[int] | None = None  # an explicit set overrides `every`

    def __post_init__(self):
        if isinstance(self.every, bool) or not isinstance(self.every, int) or self.every < 0:
            raise ValueError(f"clock every must be an int >= 0, got {self.every!r}")
        if self.adaptor_steps is not None:
            steps = frozenset(self.adaptor_steps)
            if any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in steps):
                raise ValueError(f"adaptor steps must be ints >= 0, got {sorted(self.adaptor_steps, key=str)}")
            if 0 in steps:
                raise ValueError("step 0 cannot be an adaptor step: nothing is cached before it")
            object.__setattr__(self, "adaptor_steps", steps)

    def is_adaptor_step(self, i: int) -> bool:
        if i == 0:
            return False
        if self.adaptor_steps is not None:
            return i in self.adaptor_steps
        return self.every >= 2 and i % self.every == self.every - 1

    def schedule(self, num_steps: int) -> list[bool]:
        return [self.is_adaptor_step(i) for i in range(num_steps)]

    def to_dict(self) -> dict:
        return {"every": self.every, "adaptor_steps": sorted(self.adaptor_steps) if self.adaptor_steps else None}

    @classmethod
    def from_dict(cls, d: dict) -> Clock:
        steps = d.get("adaptor_steps")
        return cls(every=d.get("every", 2), adaptor_steps=frozenset(steps) if steps is not None else None)
