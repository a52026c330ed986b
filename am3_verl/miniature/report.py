"""``report.html`` and ``curves.png`` of the miniature, from ``results.json`` alone."""

from __future__ import annotations

import html
import io
from pathlib import Path
from typing import Any

from am3_verl.atomic import write_bytes_atomic, write_text_atomic

CURVE_PANELS = (
    ("reward/mean", "mean rollout reward (training)"),
    ("asr", "training ASR (unsafe turns / judged turns)"),
    ("harmless/mean", "mean harmless (training)"),
    ("helpful/mean", "mean helpful (training)"),
)
TABLE_ROWS = (
    ("asr", "held-out dialogue ASR (lower is better)"),
    ("over_refusal", "over-refusal on benign held-out dialogues"),
    ("helpful", "mean helpful"),
    ("harmless", "mean harmless"),
)


def _mean_curve(runs: list[dict], key: str) -> tuple[list[int], list[float]]:
    steps = sorted({int(s) for r in runs for s in r["curve"]})
    means = []
    for step in steps:
        values = [r["curve"][s][key] for r in runs for s in r["curve"] if int(s) == step and key in r["curve"][s]]
        means.append(sum(values) / len(values) if values else float("nan"))
    return steps, means


def curves_png(results: dict[str, Any]) -> bytes:
    """PNG bytes: the per-step training curves, mean over seeds, one line per estimator."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(CURVE_PANELS), figsize=(4.2 * len(CURVE_PANELS), 3.4))
    for ax, (key, title) in zip(axes, CURVE_PANELS):
        for estimator in results["summary"]:
            runs = [r for r in results["runs"] if r["estimator"] == estimator]
            xs, ys = _mean_curve(runs, key)
            ax.plot(xs, ys, marker="o", markersize=3, label=estimator)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("GRPO step")
        ax.legend(fontsize=7)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


def _cell(entry: dict[str, Any], key: str) -> str:
    value, ci = entry.get(key), entry["ci95"].get(key)
    if value is None:
        return "n/a"
    return f"{value:.3f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")


def summary_table_html(summary: dict[str, Any]) -> str:
    """The before/after table, one row block per estimator (means over seeds, 95% intervals)."""
    rows = []
    for estimator, entry in summary.items():
        for i, (key, label) in enumerate(TABLE_ROWS):
            head = f'<td rowspan="{len(TABLE_ROWS)}">{html.escape(estimator)}<br>seeds {entry["seeds"]}</td>' if i == 0 else ""
            rows.append(f"<tr>{head}<td>{label}</td><td>{_cell(entry, f'{key}_before')}</td><td>{_cell(entry, f'{key}_after')}</td></tr>")
    return "<table><tr><th>estimator</th><th>metric</th><th>SFT (before)</th><th>GRPO (after)</th></tr>" + "".join(rows) + "</table>"


def by_turn_table_html(summary: dict[str, Any]) -> str:
    """Held-out ASR by turn, before and after, per estimator."""
    turns = sorted({t for e in summary.values() for t in e["asr_by_turn_after"]}, key=int)
    head = "".join(f"<th>turn {t}</th>" for t in turns)
    rows = []
    for estimator, entry in summary.items():
        for side in ("before", "after"):
            cells = "".join(
                f"<td>{'n/a' if entry[f'asr_by_turn_{side}'].get(t) is None else format(entry[f'asr_by_turn_{side}'][t], '.3f')}</td>"
                for t in turns
            )
            rows.append(f"<tr><td>{html.escape(estimator)}</td><td>{side}</td>{cells}</tr>")
    return f"<table><tr><th>estimator</th><th></th>{head}</tr>{''.join(rows)}</table>"


BIAS_COLUMNS = (
    ("mean_abs_advantage", "mean |A| (same-length)"),
    ("kept_mean_abs_change", "uncut rollouts: mean |change of A|"),
    ("kept_sign_flip_rate", "uncut rollouts: sign flips"),
    ("cut_mean_change", "cut rollouts: mean change of A"),
    ("correlation", "corr(A same-length, A mixed)"),
)


def turn_count_bias_html(bias: dict[str, Any] | None) -> str:
    """The same-length vs mixed-length table (:mod:`am3_verl.miniature.turn_count_bias`); empty when not measured."""
    if not bias:
        return ""
    head = "".join(f"<th>{label}</th>" for _, label in BIAS_COLUMNS)
    rows = []
    for estimator, entry in bias["estimators"].items():
        cells = "".join("<td>n/a</td>" if entry[key]["mean"] is None else f"<td>{entry[key]['mean']:+.3f}</td>" for key, _ in BIAS_COLUMNS)
        rows.append(f"<tr><td>{html.escape(estimator)}</td>{cells}</tr>")
    return (
        f"<h2>Turn-count bias: same-length vs mixed-length groups</h2><p>The {', '.join(bias['rollouts_of'])} runs' "
        f"{bias['rollouts']} rollouts in {bias['groups']} groups (seeds {bias['seeds']}); {bias['cut_rollouts']} rollouts cut "
        f"short at random (probability {bias['cut_probability']}), which made {bias['mixed_length_fraction']:.0%} of the groups "
        f"mixed-length. Each estimator's advantages before and after the cut, means over seeds.</p>"
        f"<table><tr><th>estimator rule</th>{head}</tr>{''.join(rows)}</table>"
    )


def write_report(results: dict[str, Any], output_dir: Path) -> Path:
    """Write ``curves.png`` and ``report.html`` into ``output_dir``; return the report's path."""
    write_bytes_atomic(output_dir / "curves.png", curves_png(results))
    cfg = results["config"]
    stages = ", ".join(f"{k} {v:.0f}s" for k, v in results["stage_seconds"].items())
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>am3-verl miniature experiment</title>
<style>body{{font-family:sans-serif;max-width:1200px;margin:2em auto}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:.3em .7em;text-align:left}}</style></head><body>
<h1>The AM3 experiment in miniature</h1>
<p>{len(results["summary"])} estimator(s) x seeds {cfg["first_seed"]}..{cfg["first_seed"] + cfg["seeds"] - 1}: cold-start SFT
({cfg["sft_steps"]} steps) on single-turn refusal and general VQA, then {cfg["steps"]} GRPO steps ({cfg["prompts"]} dialogues x
{cfg["rollouts"]} rollouts) with verl's main_ppo, judged by the ground-truth judge through the openai backend. Held-out
dialogues use substance pairs never seen in training. Wall time {results["wall_s"]:.0f}s ({stages}).</p>
<h2>Before and after, held-out dialogues (mean over seeds, 95% t-interval)</h2>{summary_table_html(results["summary"])}
<h2>Held-out ASR by turn (mean over seeds)</h2>{by_turn_table_html(results["summary"])}
{turn_count_bias_html(results.get("turn_count_bias"))}
<h2>Training curves (mean over seeds)</h2><img alt="training curves" src="curves.png" style="max-width:100%">
<p>Every run's evaluation report: <code>seed_&lt;k&gt;/eval/&lt;sft|estimator&gt;/report.html</code>.</p>
</body></html>"""
    return write_text_atomic(output_dir / "report.html", page)
