"""The smoke run's one-page report (``python -m am3_verl.demo --smoke``): AM3 GRPO training curves and the SFT-vs-GRPO evaluation table.

:func:`write_demo_report` reads verl's file-logger metrics of the ``main_ppo`` run (one JSON object per
step) and the ``metrics.json`` of two evaluation results folders (``python -m am3_verl.eval run``), and
writes a self-contained HTML page (the curves as an embedded PNG) that links both evaluation reports.
The page is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import html
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from am3_verl.atomic import write_text_atomic
from am3_verl.eval.plots import _png

CURVES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("reward (eq. 9)", ("am3/reward/mean",)),
    ("harmless / helpful", ("am3/harmless/mean", "am3/helpful/mean")),
    ("ASR", ("am3/asr", "am3/dialogue_asr")),
    ("refusal rate", ("am3/refusal_rate",)),
    ("KL to reference", ("actor/kl_loss",)),
)
"""(panel title, step metrics drawn in it); a sixth panel draws alpha per turn."""

TABLE: tuple[tuple[str, str], ...] = (
    ("asr", "ASR (unsafe turns of harmful dialogues)"),
    ("dialogue_asr", "dialogue ASR"),
    ("harmless", "harmless (mean)"),
    ("helpful", "helpful (mean)"),
    ("over_refusal", "over-refusal (benign dialogues)"),
    ("refusal_rate_harmful", "refusal rate (harmful dialogues)"),
)

HEURISTIC_BANNER = (
    "Judge: the OFFLINE HEURISTIC judge (keyword rules), not a judge model. Every score below is a keyword "
    "match; run the demo with --judge openai and a real judge endpoint for meaningful numbers."
)


@dataclass
class DemoReport:
    """Where the page went and the headline numbers it shows."""

    path: Path
    judge_line: str
    asr_before: str
    asr_after: str


def read_step_metrics(path: Path) -> dict[int, dict[str, Any]]:
    """Step -> metrics from verl's file logger (``{"step": N, "data": {...}}`` per line); {} before the file exists.

    Only complete lines are read, so the file can be read while training is still writing it.
    """
    steps: dict[int, dict[str, Any]] = {}
    if not path.is_file():
        return steps
    text = path.read_text()
    for line in text[: text.rfind("\n") + 1].splitlines():
        if line.strip():
            record = json.loads(line)
            steps.setdefault(int(record["step"]), {}).update(record["data"])
    return steps


def _curves_png(steps: dict[int, dict[str, Any]]) -> str:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    xs = sorted(steps)
    fig, axes = plt.subplots(2, 3, figsize=(12, 6.5))
    for ax, (title, keys) in zip(axes.flat, CURVES):
        for key in keys:
            ys = [steps[x].get(key) for x in xs]
            ax.plot(xs, [float("nan") if y is None else y for y in ys], marker="o", label=key.removeprefix("am3/"))
        ax.set_title(title)
        ax.set_xlabel("GRPO step")
        ax.legend(fontsize=7)
    ax = axes.flat[-1]
    turns = sorted({int(k.split("turn_")[1].split("/")[0]) for s in steps.values() for k in s if k.startswith("am3/alpha/turn_")})
    for turn in turns:
        ax.plot(xs, [steps[x].get(f"am3/alpha/turn_{turn}/mean", float("nan")) for x in xs], marker="o", label=f"turn {turn}")
    ax.set_title("alpha per turn (eq. 8)")
    ax.set_xlabel("GRPO step")
    ax.legend(fontsize=7)
    for ax in axes.flat:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    return _png(fig)


def _fmt(metric: dict[str, Any] | None) -> str:
    if not metric or metric.get("value") is None:
        return "n/a"
    ci = metric.get("ci")
    interval = f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else ""
    return f"{metric['value']:.3f}{interval} (n={metric['n']})"


def write_demo_report(path: Path, training_metrics: Path, before_dir: Path, after_dir: Path, judge: str) -> DemoReport:
    """Write the demo page at ``path`` from the training log and the SFT (before) / GRPO (after) evaluations."""
    steps = read_step_metrics(training_metrics)
    before = json.loads((before_dir / "metrics.json").read_text())["overall"]
    after = json.loads((after_dir / "metrics.json").read_text())["overall"]
    judge_line = (
        "offline heuristic judge (keyword rules)"
        if judge == "heuristic"
        else f"OpenAI-compatible judge {os.environ.get('AM3_JUDGE_MODEL', '')}".strip()
    )
    rows = "".join(
        f"<tr><td>{html.escape(label)}</td><td>{_fmt(before.get(key))}</td><td>{_fmt(after.get(key))}</td></tr>" for key, label in TABLE
    )
    banner = (
        f'<p class="banner">{html.escape(HEURISTIC_BANNER)}</p>' if judge == "heuristic" else f"<p>Judge: {html.escape(judge_line)}.</p>"
    )
    last = steps[max(steps)]
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>am3-verl pipeline smoke run</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}.banner{{background:#fff3cd;border:2px solid #bf8700;padding:.8em;font-weight:bold}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:.3em .7em;text-align:left}}</style></head><body>
{banner}
<h1>am3-verl pipeline smoke run (not a demonstration of learning): cold-start SFT, then AM3 GRPO with verl's main_ppo</h1>
<p>{len(steps)} GRPO steps of the tiny Qwen2.5-VL (random initial weights) on the bundled sample. Rollout and actor
log-probs agreed to {last.get("am3/sync/logprob_abs_diff/max", float("nan")):.1e} at the last step (weights synced every step).</p>
<h2>Training curves (per step)</h2><img alt="training curves" src="{_curves_png(steps)}" style="max-width:100%">
<h2>Before (SFT checkpoint) and after (GRPO checkpoint), validation dialogues</h2>
<table><tr><th>metric</th><th>SFT</th><th>GRPO</th></tr>{rows}</table>
<p>95% bootstrap intervals in brackets. Per-dialogue verdicts: <a href="eval/sft/report.html">SFT evaluation</a>,
<a href="eval/grpo/report.html">GRPO evaluation (with the SFT run as baseline)</a>.</p>
</body></html>"""
    write_text_atomic(path, page)
    return DemoReport(path, judge_line, _fmt(before.get("asr")), _fmt(after.get("asr")))
