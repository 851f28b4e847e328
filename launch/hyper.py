"""Building blocks for a config's `get_sweep()`: lists of override dicts (big_vision `get_hyper`).

    from launch.hyper import product, sweep, zipit

    def get_sweep(arg=None):
        return product(sweep("loss.aux_weight", [0.0, 0.1]), sweep("seed", range(3)))

Each point is a flat dict `{"dotted.config.key": value}` applied on top of `get_config()`.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

Point = dict[str, Any]


def sweep(key: str, values: Iterable[Any]) -> list[Point]:
    """One key over several values: `[{key: v} for v in values]`."""
    return [{key: value} for value in values]


def fixed(key: str, value: Any) -> list[Point]:
    """One key at one value (a one-point sweep, handy inside `product`)."""
    return [{key: value}]


def _merge(parts: Sequence[Mapping[str, Any]]) -> Point:
    out: Point = {}
    for part in parts:
        clash = set(out) & set(part)
        if clash:
            raise ValueError(f"sweep combines the same key twice: {', '.join(sorted(clash))}")
        out.update(part)
    return out


def product(*sweeps: Sequence[Mapping[str, Any]]) -> list[Point]:
    """Cartesian product of sweeps; the last one varies fastest."""
    return [_merge(parts) for parts in itertools.product(*sweeps)]


def zipit(*sweeps: Sequence[Mapping[str, Any]]) -> list[Point]:
    """Element-wise union of sweeps of equal length (keys that vary together)."""
    lengths = {len(s) for s in sweeps}
    if len(lengths) > 1:
        raise ValueError(f"zipit needs sweeps of equal length, got {sorted(lengths)}")
    return [_merge(parts) for parts in zip(*sweeps)]
