"""Deterministic stratified train/val split.

Each record gets a rank from ``sha256(f"{seed}:{id}")``; within each stratum (category, domain) the
lowest ranks go to validation. The number of validation records per stratum is its proportional share
of the total, rounded by largest remainder (ties broken by stratum name), so the total is exactly the
requested size. A record's assignment depends only on its id, the seed and the stratum sizes, never on
file order or on the number of workers.
"""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from typing import Iterable


def resolve_val_count(total: int, val_size: int | None, val_ratio: float | None) -> int:
    """The number of validation records for ``total`` records; raises ValueError for impossible requests."""
    if val_size is not None and val_ratio is not None:
        raise ValueError("give val_size or val_ratio, not both")
    if val_size is not None:
        if val_size < 0:
            raise ValueError(f"val_size must be >= 0, got {val_size}")
        if val_size > total:
            raise ValueError(f"val_size {val_size} is larger than the {total} usable records")
        return val_size
    ratio = 0.0 if val_ratio is None else val_ratio
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"val_ratio must be in [0, 1), got {ratio}")
    return int(math.floor(ratio * total + 0.5))


def _rank(seed: int, record_id: str) -> bytes:
    return hashlib.sha256(f"{seed}:{record_id}".encode()).digest()


def stratified_val_positions(keys: Iterable[tuple[int, str, str]], n_val: int, seed: int) -> set[int]:
    """Positions of the records that go to validation.

    ``keys`` holds ``(position, id, stratum)`` for every record eligible for the split (ids unique);
    exactly ``n_val`` positions are returned.
    """
    strata: dict[str, list[tuple[bytes, int]]] = defaultdict(list)
    for position, record_id, stratum in keys:
        strata[stratum].append((_rank(seed, record_id), position))
    total = sum(len(members) for members in strata.values())
    if n_val > total:
        raise ValueError(f"cannot take {n_val} validation records from {total}")
    if n_val == 0:
        return set()
    quotas = {name: len(members) * n_val / total for name, members in strata.items()}
    counts = {name: math.floor(q) for name, q in quotas.items()}
    leftover = n_val - sum(counts.values())
    by_remainder = sorted(quotas, key=lambda name: (-(quotas[name] - counts[name]), name))
    for name in by_remainder[:leftover]:
        counts[name] += 1
    chosen: set[int] = set()
    for name, members in strata.items():
        members.sort()
        chosen.update(position for _, position in members[: counts[name]])
    return chosen
