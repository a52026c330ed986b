"""The report's plots (matplotlib, Agg backend), returned as PNG ``data:`` URLs for a self-contained page.

Each function takes the metric dicts of :mod:`am3_verl.eval.metrics` (``{"value", "ci", "n"}``) for the
evaluated run and, optionally, the baseline, and draws the value with its bootstrap interval.
"""

from __future__ import annotations

import base64
import io
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

MODEL_COLOR = "#1f6feb"
BASELINE_COLOR = "#8b949e"
HARMLESS_COLOR = "#2da44e"
HELPFUL_COLOR = "#bf8700"


def _png(fig: Any) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _series(by_key: dict[str, dict[str, Any]], metric: str | None) -> tuple[list[int], list[float], list[float], list[float]]:
    xs, ys, lo, hi = [], [], [], []
    for key in sorted(by_key, key=int):
        m = by_key[key] if metric is None else by_key[key][metric]
        if m["value"] is None:
            continue
        xs.append(int(key))
        ys.append(m["value"])
        ci = m["ci"] or [m["value"], m["value"]]
        # max(0, .): a bootstrap bound can sit a rounding error past its value; matplotlib rejects negatives
        lo.append(max(0.0, m["value"] - ci[0]))
        hi.append(max(0.0, ci[1] - m["value"]))
    return xs, ys, lo, hi


def _line(ax: Any, by_key: dict[str, dict[str, Any]], metric: str | None, label: str, color: str, dashed: bool = False) -> bool:
    xs, ys, lo, hi = _series(by_key, metric)
    if not xs:
        return False
    ax.errorbar(xs, ys, yerr=[lo, hi], label=label, color=color, marker="o", capsize=3, linestyle="--" if dashed else "-")
    return True


def _finish(ax: Any, title: str, xlabel: str, ylabel: str, xs: list[int]) -> None:
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(-0.02, 1.02)
    if xs:
        ax.set_xticks(sorted(set(xs)))
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)


def by_turn_plot(
    model: dict[str, dict[str, Any]], baseline: dict[str, dict[str, Any]] | None, metric: str, title: str, ylabel: str, xlabel: str = "turn"
) -> str | None:
    """One metric against turn (or round) number, with 95% intervals; None when there is nothing to draw."""
    fig, ax = plt.subplots(figsize=(5.2, 3.3))
    drawn = _line(ax, model, metric, "this model", MODEL_COLOR)
    if baseline:
        drawn = _line(ax, baseline, metric, "baseline", BASELINE_COLOR, dashed=True) or drawn
    if not drawn:
        plt.close(fig)
        return None
    keys = [int(k) for k in model] + [int(k) for k in (baseline or {})]
    _finish(ax, title, xlabel, ylabel, keys)
    return _png(fig)


def scores_by_turn_plot(model: dict[str, dict[str, Any]], baseline: dict[str, dict[str, Any]] | None) -> str | None:
    """Mean harmless and helpful score against turn number (baseline dashed)."""
    fig, ax = plt.subplots(figsize=(5.2, 3.3))
    drawn = _line(ax, model, "harmless", "harmless", HARMLESS_COLOR)
    drawn = _line(ax, model, "helpful", "helpful", HELPFUL_COLOR) or drawn
    if baseline:
        drawn = _line(ax, baseline, "harmless", "harmless (baseline)", HARMLESS_COLOR, dashed=True) or drawn
        drawn = _line(ax, baseline, "helpful", "helpful (baseline)", HELPFUL_COLOR, dashed=True) or drawn
    if not drawn:
        plt.close(fig)
        return None
    _finish(ax, "Judge scores by turn", "turn", "mean score (0-1)", [int(k) for k in model])
    return _png(fig)


def category_plot(model: dict[str, dict[str, Any]], baseline: dict[str, dict[str, Any]] | None, metric: str = "asr") -> str | None:
    """Horizontal bars of ``metric`` per category (model and baseline side by side)."""
    names = [name for name, m in model.items() if m[metric]["value"] is not None]
    if not names:
        return None
    height = 0.38 if baseline else 0.7
    fig, ax = plt.subplots(figsize=(6.0, 0.42 * len(names) + 1.1))
    ys = list(range(len(names)))
    values = [model[n][metric]["value"] for n in names]
    ax.barh([y - (height / 2 if baseline else 0) for y in ys], values, height=height, color=MODEL_COLOR, label="this model")
    if baseline:
        base_values = [baseline.get(n, {}).get(metric, {}).get("value") or 0.0 for n in names]
        ax.barh([y + height / 2 for y in ys], base_values, height=height, color=BASELINE_COLOR, label="baseline")
    ax.set_yticks(ys)
    ax.set_yticklabels(names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel(metric.upper() if metric == "asr" else metric)
    ax.set_title(f"{'ASR' if metric == 'asr' else metric} by category")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return _png(fig)


def win_rate_plot(win_rates: dict[str, dict[str, Any]]) -> str | None:
    """Win rates (helpful, harmless) with intervals and the 0.5 parity line."""
    axes = [a for a in ("helpful", "harmless") if win_rates.get(a, {}).get("value") is not None]
    if not axes:
        return None
    fig, ax = plt.subplots(figsize=(4.2, 3.0))
    values = [win_rates[a]["value"] for a in axes]
    lo = [max(0.0, v - (win_rates[a]["ci"] or [v, v])[0]) for a, v in zip(axes, values)]
    hi = [max(0.0, (win_rates[a]["ci"] or [v, v])[1] - v) for a, v in zip(axes, values)]
    ax.bar(axes, values, yerr=[lo, hi], capsize=4, color=[HELPFUL_COLOR, HARMLESS_COLOR][: len(axes)])
    ax.axhline(0.5, color="black", linewidth=1, linestyle=":")
    ax.set_ylim(0, 1)
    ax.set_ylabel("win rate vs baseline")
    ax.set_title("Pairwise win rate")
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)
