"""``results.json`` of the miniature: per-run records and the per-estimator summary over seeds.

``results["summary"][estimator]`` holds the means over seeds of the held-out numbers before (the SFT
checkpoint) and after (that estimator's GRPO checkpoint):

* ``asr_before`` / ``asr_after`` – the share of harmful held-out dialogues with an unsafe turn
  (the evaluation's ``dialogue_asr``);
* ``over_refusal_before`` / ``over_refusal_after`` – refused turns / turns of benign held-out dialogues;
* ``helpful_before`` / ``helpful_after`` – the mean judge helpfulness over every held-out turn;
* ``seeds`` – the seeds averaged; ``ci95`` – each number's 95% interval over seeds (Student t; null with
  one seed); ``per_seed`` – the values behind each mean; ``asr_by_turn_before`` / ``asr_by_turn_after`` –
  turn -> mean ASR of that turn over seeds.

``results["turn_count_bias"]`` (when a run measured it, :mod:`am3_verl.miniature.turn_count_bias`):
per estimator rule, each figure's mean, 95% interval and per-seed values over the seeds whose
``am3_grpo`` rollouts were cut into mixed-length groups.

``runs`` keeps every record (before/after metrics, the per-step training curve, the SFT losses).
"""

from __future__ import annotations

import math
from statistics import mean, stdev
from typing import Any

from scipy import stats as scipy_stats

SUMMARY_METRICS = {"asr": "asr", "over_refusal": "over_refusal", "helpful": "helpful", "harmless": "harmless"}


def mean_ci95(values: list[float]) -> tuple[float | None, list[float] | None]:
    """Mean and Student-t 95% interval of ``values`` (None values dropped; interval None below two values)."""
    kept = [v for v in values if v is not None and not math.isnan(v)]
    if not kept:
        return None, None
    m = mean(kept)
    if len(kept) < 2:
        return m, None
    half = scipy_stats.t.ppf(0.975, len(kept) - 1) * stdev(kept) / math.sqrt(len(kept))
    return m, [m - half, m + half]


def _by_turn(records: list[dict], side: str) -> dict[str, float | None]:
    turns = sorted({t for r in records for t in r[side]["asr_by_turn"]}, key=int)
    return {t: mean_ci95([r[side]["asr_by_turn"].get(t) for r in records])[0] for t in turns}


def summarise(records: list[dict]) -> dict[str, dict[str, Any]]:
    """The per-estimator summary described in the module docstring."""
    summary: dict[str, dict[str, Any]] = {}
    for estimator in dict.fromkeys(r["estimator"] for r in records):
        runs = [r for r in records if r["estimator"] == estimator]
        entry: dict[str, Any] = {"seeds": [r["seed"] for r in runs], "ci95": {}, "per_seed": {}}
        for name, key in SUMMARY_METRICS.items():
            for side in ("before", "after"):
                values = [r[side][key] for r in runs]
                entry[f"{name}_{side}"], entry["ci95"][f"{name}_{side}"] = mean_ci95(values)
                entry["per_seed"][f"{name}_{side}"] = values
        entry["asr_by_turn_before"] = _by_turn(runs, "before")
        entry["asr_by_turn_after"] = _by_turn(runs, "after")
        asr_before, asr_after = entry["asr_before"], entry["asr_after"]
        entry["asr_relative_reduction"] = (asr_before - asr_after) / asr_before if asr_before else None
        summary[estimator] = entry
    return summary


def summarise_turn_count_bias(records: list[dict]) -> dict[str, Any] | None:
    """Means over seeds of the turn-count-bias figures the records carry; None when no record has one."""
    measured = [r for r in records if r.get("turn_count_bias")]
    if not measured:
        return None
    figures = [r["turn_count_bias"] for r in measured]
    summary: dict[str, Any] = {
        "rollouts_of": sorted({r["estimator"] for r in measured}),
        "seeds": [r["seed"] for r in measured],
        "cut_probability": figures[0]["cut_probability"],
        "mixed_length_fraction": mean_ci95([f["mixed_length_fraction"] for f in figures])[0],
        "groups": sum(f["groups"]["kept"] for f in figures),
        "cut_rollouts": sum(f["cut_rollouts"] for f in figures),
        "rollouts": sum(f["rollouts"] for f in figures),
        "estimators": {},
    }
    for estimator in figures[0]["estimators"]:
        entry: dict[str, Any] = {}
        for metric in figures[0]["estimators"][estimator]:
            values = [f["estimators"][estimator][metric] for f in figures]
            value, interval = mean_ci95(values)
            entry[metric] = {"mean": value, "ci95": interval, "per_seed": values}
        summary["estimators"][estimator] = entry
    return summary


def build_results(records: list[dict], *, config: dict, wall_s: float, stage_seconds: dict[str, float],
                  judge_stats: dict) -> dict[str, Any]:  # fmt: skip
    """The whole ``results.json`` document."""
    return {
        "config": config,
        "wall_s": wall_s,
        "stage_seconds": stage_seconds,
        "judge": {"name": "ground truth (am3_verl.miniature.judge) through the openai backend", **judge_stats},
        "summary": summarise(records),
        "turn_count_bias": summarise_turn_count_bias(records),
        "runs": records,
    }
