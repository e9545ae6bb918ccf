"""Checks of request arguments: each raises TypeError/ValueError naming the argument."""

from __future__ import annotations

import math
import numbers


def prompts(prompt, max_batch: int, name: str = "prompt") -> list[str]:
    """A str or a non-empty list of str -> list[str]."""
    items = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(items, (list, tuple)):
        raise TypeError(f"{name} must be a str or a list of str, got {type(prompt).__name__}")
    if not items:
        raise ValueError(f"{name} list is empty")
    if len(items) > max_batch:
        raise ValueError(f"{name} list has {len(items)} prompts; at most {max_batch} per call")
    for k, p in enumerate(items):
        if not isinstance(p, str):
            raise TypeError(f"{name}[{k}] must be a str, got {type(p).__name__}")
        if not p.strip():
            raise ValueError(f"{name}[{k}] is empty or only white space")
        if "\x00" in p:
            raise ValueError(f"{name}[{k}] contains a NUL character")
    return list(items)


def positive_int(value, name: str, maximum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if not 1 <= value <= maximum:
        raise ValueError(f"{name} must be in [1, {maximum}], got {value}")
    return int(value)


def finite_float(value, name: str, low: float = -math.inf, high: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be in [{low:g}, {high:g}], got {value:g}")
    return float(value)


def seed(value) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"seed must be an int, a list of ints or None, got {type(value).__name__}")
    if not 0 <= value < 2**63:
        raise ValueError(f"seed must be in [0, 2**63), got {value}")
    return int(value)


def per_row(value, count: int, check, name: str) -> list:
    """A value for every row: one value (all rows) or a list of `count` values, each checked."""
    if isinstance(value, (list, tuple)):
        if len(value) != count:
            raise ValueError(f"{name} has {len(value)} entries for {count} prompts")
        return [check(v) for v in value]
    return [check(value)] * count


def image_side(value, name: str, multiple: int, maximum: int) -> int:
    value = positive_int(value, name, maximum)
    if value % multiple:
        raise ValueError(f"{name} must be a multiple of {multiple} (the VAE factor times the UNet's downsampling "
                         f"or the transformer's patch), got {value}")
    return value
