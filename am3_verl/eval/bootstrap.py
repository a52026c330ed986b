"""Percentile bootstrap confidence intervals that resample whole items (clusters), vectorised.

Every metric of the report is a ratio of sums over items: ASR = unsafe turns / judged turns, a mean
score = sum of scores / judged turns, a win rate = wins / (wins + losses). The turns of one dialogue
are not independent, so the resampling unit is the item: draw ``n`` items with replacement, recompute
the ratio, repeat ``n_resamples`` times, and take the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2``
percentiles. Resamples whose denominator is 0 are left out. Draws are made in blocks as multinomial
counts, so memory stays bounded for large evaluations, and the draws for one (items, resamples, seed)
are reused by every metric over the same items (the intervals are then also mutually consistent).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Callable, Iterator

import numpy as np

DEFAULT_RESAMPLES = 1000
DEFAULT_CONFIDENCE = 0.95
_BLOCK_CELLS = 4_000_000
"""Resample-by-item counts drawn at once (int64): about 32 MB."""
_CACHE_CELLS = 32_000_000
"""Up to this many counts (float32, 128 MB) are kept and reused by every metric over the same items."""


def resample_counts(n: int, n_resamples: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Blocks of shape ``[block, n]``: how often each item is drawn in each resample (rows sum to ``n``)."""
    if n <= 0:
        return
    block = max(1, min(n_resamples, _BLOCK_CELLS // n))
    done = 0
    while done < n_resamples:
        size = min(block, n_resamples - done)
        yield rng.multinomial(n, np.full(n, 1.0 / n), size=size)
        done += size


@lru_cache(maxsize=2)
def _cached_blocks(n: int, n_resamples: int, seed: int) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    return tuple(block.astype(np.float32) for block in resample_counts(n, n_resamples, rng))


def _blocks(n: int, n_resamples: int, seed: int) -> Iterator[np.ndarray]:
    """The count blocks for ``(n, n_resamples, seed)``: the same draws every time (cached when small enough)."""
    if n * n_resamples <= _CACHE_CELLS:
        yield from _cached_blocks(n, n_resamples, seed)
        return
    for block in resample_counts(n, n_resamples, np.random.default_rng(seed)):
        yield block.astype(np.float32)


def bootstrap_statistic(
    n: int,
    statistic: Callable[[np.ndarray], np.ndarray],
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> tuple[float, float] | None:
    """Percentile interval of ``statistic(counts)`` over item resamples.

    ``statistic`` maps a ``[block, n]`` count matrix to ``[block]`` values (NaN where undefined). Returns
    None when there are no items, ``n_resamples`` is 0, or no resample gives a defined value.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n == 0 or n_resamples <= 0:
        return None
    values = np.concatenate([np.asarray(statistic(c), dtype=np.float64) for c in _blocks(n, n_resamples, seed)])
    values = values[~np.isnan(values)]
    if values.size == 0:
        return None
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(values, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def ratio(num: np.ndarray, den: np.ndarray) -> float:
    """``sum(num) / sum(den)``, NaN when the denominator is 0."""
    total = float(np.sum(den))
    return float(np.sum(num)) / total if total > 0 else float("nan")


def ratio_ci(
    num: np.ndarray,
    den: np.ndarray,
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> tuple[float, float] | None:
    """Bootstrap interval of ``sum(num) / sum(den)`` resampling items (``num[i]``, ``den[i]`` per item)."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    if num.shape != den.shape or num.ndim != 1:
        raise ValueError(f"num and den must be 1-D of the same length, got {num.shape} and {den.shape}")

    def statistic(counts: np.ndarray) -> np.ndarray:
        d = counts @ den
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(d > 0, (counts @ num) / np.where(d > 0, d, 1.0), np.nan)

    return bootstrap_statistic(len(num), statistic, n_resamples=n_resamples, confidence=confidence, seed=seed)
