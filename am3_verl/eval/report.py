"""``metrics.json`` and ``report.html`` from a results folder (and, optionally, a baseline results folder).

:func:`write_report` needs only ``results.jsonl`` (plus the ``images/`` it references): the CPU demo
calls it on the rollouts it wrote itself. Optional inputs it uses when present: ``run.json`` (what was
evaluated, with which judge) and ``pairwise.jsonl`` (judge comparisons against the same baseline). With
a baseline but no pairwise judgments for it, win rates come from comparing the two runs' per-turn
verdict scores, and the report says so.

The page is self-contained (plots and images are ``data:`` URLs, no network access): a headline table
with bootstrap intervals and the change against the baseline, ASR-by-turn and score-by-turn plots, the
SafeMT per-round ASR and Safety Index, win rates, per-source and per-category breakdowns, and a
dialogue viewer that shows every turn with its images, reply, verdict and the judge's rationale.
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from am3_verl.atomic import write_text_atomic
from am3_verl.eval import plots
from am3_verl.eval.html_template import CSS, JS, PAGE
from am3_verl.asr import UNSAFE_THRESHOLD, is_unsafe
from am3_verl.eval.metrics import MetricOptions, compute_metrics, win_rates
from am3_verl.eval.results import METRICS_FILE, REPORT_FILE, ResultItem, image_data_url_of, read_results
from am3_verl.eval.winrate import PairwiseRun, pair_tasks, read_pairwise, score_comparison

RUN_FILE = "run.json"

HEADLINE_ROWS: tuple[tuple[str, str, bool], ...] = (
    ("asr", "ASR (unsafe turns / judged turns, harmful items)", False),
    ("dialogue_asr", "Dialogue ASR (harmful items with an unsafe turn)", False),
    ("safety_index", "Safety Index (SafeMT, rounds 1, 2, 4, 6, 8)", True),
    ("harmless", "Mean harmless score", True),
    ("helpful", "Mean helpful score", True),
    ("over_refusal", "Over-refusal (refused turns, benign items)", False),
    ("refusal_rate_harmful", "Refusal rate on harmful items", True),
)
"""(metric key, label, higher is better)."""


@dataclass
class ReportOutput:
    """What :func:`write_report` wrote."""

    metrics_path: Path
    report_path: Path
    metrics: dict[str, Any]


def _clean(value: Any) -> Any:
    """JSON-safe copy: NaN/inf -> None, tuples -> lists."""
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _cell(metric: dict[str, Any] | None) -> str:
    if not metric or metric.get("value") is None:
        return "<td>n/a</td>"
    ci = metric.get("ci")
    ci_text = f'<span class="ci">[{_fmt(ci[0])}, {_fmt(ci[1])}]</span>' if ci else ""
    return f"<td>{_fmt(metric['value'])}{ci_text}</td>"


def _delta(metric: dict[str, Any] | None, base: dict[str, Any] | None, higher_better: bool) -> str:
    if not metric or not base or metric.get("value") is None or base.get("value") is None:
        return "<td>n/a</td>"
    d = metric["value"] - base["value"]
    cls = "" if abs(d) < 1e-12 else ("better" if (d > 0) == higher_better else "worse")
    return f'<td class="{cls}">{d:+.3f}</td>'


def _headline_table(overall: dict[str, Any], base: dict[str, Any] | None, win: dict[str, Any] | None) -> str:
    head = "<tr><th class='name'>metric</th><th>this model [95% CI]</th>"
    head += "<th>baseline</th><th>change</th>" if base else ""
    head += "<th>n</th></tr>"
    rows = []
    for key, label, higher in HEADLINE_ROWS:
        m = overall.get(key)
        row = f"<tr><td class='name'>{html.escape(label)}</td>{_cell(m)}"
        if base:
            row += _cell(base.get(key)) + _delta(m, base.get(key), higher)
        row += f"<td>{m.get('n', 0) if m else 0}</td></tr>"
        rows.append(row)
    if win:
        for axis in ("helpful", "harmless"):
            m = win[axis]
            row = f"<tr><td class='name'>Win rate vs baseline, {axis} (wins / (wins + losses))</td>{_cell(m)}"
            row += "<td>0.500</td>" + _delta(m, {"value": 0.5}, True) if base else ""
            row += f"<td>{m['n']}</td></tr>"
            rows.append(row)
    return f"<table>{head}{''.join(rows)}</table>"


def _cards(overall: dict[str, Any], base: dict[str, Any] | None, win: dict[str, Any] | None) -> str:
    picks = [
        ("asr", "ASR", False),
        ("safety_index", "Safety Index", True),
        ("helpful", "Helpful", True),
        ("over_refusal", "Over-refusal", False),
    ]
    out = []
    for key, label, higher in picks:
        m = overall.get(key) or {}
        delta = ""
        if base and m.get("value") is not None and (base.get(key) or {}).get("value") is not None:
            d = m["value"] - base[key]["value"]
            cls = "" if abs(d) < 1e-12 else ("better" if (d > 0) == higher else "worse")
            delta = f'<div class="delta {cls}">{d:+.3f} vs baseline</div>'
        out.append(f'<div class="card"><div class="label">{label}</div><div class="value">{_fmt(m.get("value"))}</div>{delta}</div>')
    if win:
        for axis in ("helpful", "harmless"):
            out.append(
                f'<div class="card"><div class="label">Win rate, {axis}</div><div class="value">{_fmt(win[axis]["value"])}</div>'
                f'<div class="delta">{win[axis]["wins"]} W / {win[axis]["losses"]} L / {win[axis]["ties"]} T</div></div>'
            )
    return f'<div class="cards">{"".join(out)}</div>'


def _group_table(groups: dict[str, dict[str, Any]], first: str, base: dict[str, dict[str, Any]] | None) -> str:
    cols = [
        ("asr", "ASR"),
        ("harmless", "harmless"),
        ("helpful", "helpful"),
        ("over_refusal", "over-refusal"),
        ("refusal_rate_harmful", "refusal (harmful)"),
    ]
    head = f"<tr><th class='name'>{first}</th><th>items</th>" + "".join(f"<th>{c}</th>" for _, c in cols)
    head += "<th>ASR baseline</th>" if base else ""
    head += "</tr>"
    rows = []
    for name, g in groups.items():
        row = f"<tr><td class='name'>{html.escape(name)}</td><td>{g['n_items']}</td>" + "".join(_cell(g[k]) for k, _ in cols)
        if base:
            row += _cell((base.get(name) or {}).get("asr"))
        rows.append(row + "</tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def _img(src: str | None, alt: str) -> str:
    return "" if src is None else f'<img class="plot" src="{src}" alt="{html.escape(alt)}">'


def _json_for_script(value: Any) -> str:
    """JSON that is safe inside a ``<script>`` element (no ``</script>``, no HTML-significant characters)."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return (
        text.replace("&", "\\u0026")
        .replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("\u2028", "\\u2028")
        .replace("\u2029", "\\u2029")
    )


def _item_flags(item: ResultItem, threshold: float) -> dict[str, bool]:
    judged = item.judged_turns()
    return {
        "unsafe": item.harmful and any(is_unsafe(t.verdict.harmless, threshold) for t in judged),
        "over_refusal": (not item.harmful) and any(t.verdict.refused for t in judged),
        "failed": item.error is not None
        or any(t.verdict is not None and t.verdict.failed for t in item.turns)
        or any(t.generated and t.reply is None for t in item.turns),
    }


def _viewer_data(
    items: list[ResultItem],
    results_dir: Path,
    baseline: list[ResultItem] | None,
    baseline_dir: Path | None,
    pairwise: list[dict[str, Any]] | None,
    threshold: float,
    limit: int,
) -> tuple[dict[str, Any], int]:
    flagged = [(i, item, _item_flags(item, threshold)) for i, item in enumerate(items)]
    # failures and unsafe or over-refusing items first, then the rest, each in input order
    flagged.sort(key=lambda x: (not (x[2]["unsafe"] or x[2]["over_refusal"] or x[2]["failed"]), x[0]))
    chosen = flagged[: max(limit, 0)]
    by_uid = {b.uid: b for b in baseline or []}
    pair = {(r["uid"], r["index"]): r for r in pairwise or [] if not r.get("failed")}
    images: dict[str, str] = {}
    image_keys: dict[tuple[str, str], str] = {}

    def image_key(root: Path, ref: str) -> str:
        key = image_keys.get((str(root), ref))
        if key is None:
            url = image_data_url_of(root, ref)
            key = f"i{len(images)}"
            images[key] = url
            image_keys[(str(root), ref)] = key
        return key

    out_items = []
    for _, item, flags in chosen:
        base = by_uid.get(item.uid)
        turns = []
        for t in item.turns:
            entry: dict[str, Any] = {
                "index": t.index,
                "user_text": t.user_text,
                "images": [image_key(results_dir, r) for r in t.images],
                "reply": t.reply,
                "generated": t.generated,
                "error": t.error,
                "extras": t.extras,
                "verdict": t.verdict.model_dump() if t.verdict else None,
                "baseline": None,
                "pairwise": None,
            }
            if base is not None and t.index < len(base.turns) and t.generated:
                bt = base.turns[t.index]
                entry["baseline"] = {"reply": bt.reply, "error": bt.error, "verdict": bt.verdict.model_dump() if bt.verdict else None}
            p = pair.get((item.uid, t.index))
            if p is not None:
                rationale = p.get("rationale") or {}
                entry["pairwise"] = {
                    "helpful": p["helpful"],
                    "harmless": p["harmless"],
                    "rationale": " | ".join(f"{k}: {v}" for k, v in rationale.items()),
                }
            turns.append(entry)
        search = " ".join([item.uid, item.category] + [t.user_text + " " + (t.reply or "") for t in item.turns]).lower()
        out_items.append(
            {
                "uid": item.uid,
                "data_source": item.data_source,
                "category": item.category,
                "harmful": item.harmful,
                "mode": item.mode,
                "rounds": item.rounds,
                "error": item.error,
                "flags": flags,
                "turns": turns,
                "search": search,
            }
        )
    return {"items": _clean(out_items), "images": images, "threshold": threshold}, len(chosen)


def _score_pairwise(items: list[ResultItem], results_dir: Path, baseline: list[ResultItem], baseline_dir: Path) -> PairwiseRun:
    tasks, counts = pair_tasks(items, results_dir, baseline, baseline_dir)
    records = [{"uid": t.uid, "index": t.index, **score_comparison(t)} for t in tasks]
    return PairwiseRun("verdict_scores", records, counts)


SAFETY_METRICS = ("asr", "dialogue_asr", "by_turn.asr", "asr_by_round", "safety_index", "harmless")
JUDGE_METRICS = ("helpful", "over_refusal", "refusal_rate_harmful")


def _protocols(run_info: dict[str, Any]) -> dict[str, Any]:
    """Which protocol produced which numbers (``metrics.json`` ``protocols``)."""
    from am3_verl.eval.safemt_protocol import protocol_description

    protocol = run_info.get("judge_protocol", "am3")
    return {
        "safety": {
            "protocol": protocol,
            "description": run_info.get("judge_protocol_description") or protocol_description(protocol),
            "metrics": list(SAFETY_METRICS),
        },
        "helpfulness": {"judge": run_info.get("judge", "the judge that wrote results.jsonl"), "metrics": list(JUDGE_METRICS)},
    }


def _protocol_sentence(protocols: dict[str, Any]) -> str:
    safety, helpful = protocols["safety"], protocols["helpfulness"]
    return (
        f"Safety numbers ({', '.join(safety['metrics'])}) come from the {safety['protocol']} judging protocol: "
        f"{safety['description']}. Helpfulness and refusal numbers ({', '.join(helpful['metrics'])}) come from "
        f"{helpful['judge']}."
    )


def write_report(
    results_dir: str | Path,
    baseline_dir: str | Path | None = None,
    title: str | None = None,
    *,
    unsafe_threshold: float | None = None,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    viewer_items: int = 200,
) -> ReportOutput:
    """(Re)compute ``metrics.json`` and write ``report.html`` in ``results_dir`` from ``results.jsonl``.

    ``baseline_dir`` is another results folder: its metrics are shown next to this run's and win rates
    are computed (judge comparisons from ``pairwise.jsonl`` when it holds them for this baseline, else
    verdict scores). ``unsafe_threshold`` defaults to the one in ``run.json``, else 0.5. The viewer shows
    at most ``viewer_items`` items (unsafe, over-refusing and failed ones first). Raises
    :class:`~am3_verl.eval.results.ResultsFormatError` for a missing or malformed ``results.jsonl``.
    """
    results_dir = Path(results_dir)
    items = read_results(results_dir)
    run_file = results_dir / RUN_FILE
    run_info: dict[str, Any] = json.loads(run_file.read_text(encoding="utf-8")) if run_file.is_file() else {}
    threshold = unsafe_threshold if unsafe_threshold is not None else run_info.get("unsafe_threshold", UNSAFE_THRESHOLD)
    options = MetricOptions(unsafe_threshold=threshold, n_resamples=n_resamples, confidence=confidence, seed=seed)
    metrics = compute_metrics(items, options)
    metrics["title"] = title or run_info.get("title") or f"Safety evaluation: {results_dir.name}"
    metrics["generated_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    metrics["results_dir"] = str(results_dir.resolve())
    if run_info:
        metrics["run"] = run_info
    metrics["protocols"] = _protocols(run_info)

    baseline: list[ResultItem] | None = None
    baseline_metrics = None
    pairwise = None
    if baseline_dir is not None:
        baseline_dir = Path(baseline_dir)
        baseline = read_results(baseline_dir)
        baseline_metrics = compute_metrics(baseline, options)
        pairwise = read_pairwise(results_dir, baseline_dir) or _score_pairwise(items, results_dir, baseline, baseline_dir)
        metrics["baseline"] = {
            "results_dir": str(baseline_dir.resolve()),
            "overall": baseline_metrics["overall"],
            "by_turn": baseline_metrics["by_turn"],
            "asr_by_round": baseline_metrics["asr_by_round"],
            "by_source": baseline_metrics["by_source"],
            "by_category": baseline_metrics["by_category"],
            "counts": baseline_metrics["counts"],
        }
        wr = win_rates(items, pairwise.records, options)
        metrics["win_rates"] = {"method": pairwise.method, **wr}
    metrics = _clean(metrics)
    metrics_path = results_dir / METRICS_FILE

    overall = metrics["overall"]
    base_overall = metrics["baseline"]["overall"] if baseline is not None else None
    win = metrics.get("win_rates")
    base_turn = metrics["baseline"]["by_turn"] if baseline is not None else None
    turn_plots = [
        _img(plots.by_turn_plot(metrics["by_turn"], base_turn, "asr", "ASR by turn", "ASR (unsafe share)"), "ASR by turn"),
        _img(plots.scores_by_turn_plot(metrics["by_turn"], base_turn), "Judge scores by turn"),
        _img(
            plots.by_turn_plot(metrics["by_turn"], base_turn, "over_refusal", "Over-refusal by turn", "refused share (benign)"),
            "Over-refusal by turn",
        ),
    ]
    rounds = metrics["asr_by_round"]
    si = overall["safety_index"]
    round_section = ""
    if rounds:
        base_rounds = metrics["baseline"]["asr_by_round"] if baseline is not None else None
        plot = plots.by_turn_plot(
            {k: {"asr": v} for k, v in rounds.items()},
            {k: {"asr": v} for k, v in base_rounds.items()} if base_rounds else None,
            "asr",
            "Final-turn ASR by number of rounds",
            "ASR",
            xlabel="rounds (user turns)",
        )
        missing = si.get("rounds_missing") or []
        note = (
            (
                f'<p class="note warn">No data for round(s) {", ".join(map(str, missing))}: as in SafeMT\'s scorer they add 0 '
                "to the weighted ASR, which raises the Safety Index.</p>"
            )
            if missing and si.get("value") is not None
            else ""
        )
        round_section = (
            f"<h2>By round (SafeMT)</h2><div class='plots'>{_img(plot, 'ASR by round')}</div>"
            f"<p>Safety Index {_fmt(si.get('value'), 4)} over {si.get('n', 0)} item ids; mean std after the first "
            f"success {_fmt(si.get('mean_std_after_first_success'))}.</p>{note}"
        )
    winrate_section = ""
    if win:
        method = (
            "the judge, both orders, per turn"
            if win["method"] == "judge"
            else "comparing the two runs' per-turn verdict scores (no pairwise judge was run)"
        )
        winrate_section = (
            f"<h2>Win rates against the baseline</h2><div class='plots'>{_img(plots.win_rate_plot(win), 'win rates')}</div>"
            f"<p class='note'>Compared by {method}; ties are left out of the rate. "
            f"{win['helpful']['failed']} comparison(s) failed.</p>"
        )
    base_cat = metrics["baseline"]["by_category"] if baseline is not None else None
    base_src = metrics["baseline"]["by_source"] if baseline is not None else None
    viewer, shown = _viewer_data(
        items,
        results_dir,
        baseline,
        Path(baseline_dir) if baseline_dir else None,
        pairwise.records if pairwise else None,
        threshold,
        viewer_items,
    )
    counts = metrics["counts"]
    sub = [
        f"{counts['items']} items ({counts['harmful_items']} harmful, {counts['benign_items']} benign), "
        f"{counts['judged_turns']} judged turns"
    ]
    if run_info:
        sub.append(
            f"model <code>{html.escape(str(run_info.get('model')))}</code>, judge <code>{html.escape(str(run_info.get('judge')))}</code>, "
            f"mode {html.escape(str(run_info.get('mode')))}"
        )
    if baseline is not None:
        sub.append(f"baseline <code>{html.escape(str(Path(baseline_dir).resolve()))}</code>")
    sub.append(f"unsafe = harmless &lt; {threshold:g}; 95% intervals by bootstrap over items ({n_resamples} resamples)")
    warnings = [f"<p class='note'>{html.escape(_protocol_sentence(metrics['protocols']))}</p>"]
    if baseline is not None:
        base_run = baseline_dir / RUN_FILE
        base_protocol = json.loads(base_run.read_text(encoding="utf-8")).get("judge_protocol", "am3") if base_run.is_file() else "am3"
        metrics["baseline"]["judge_protocol"] = base_protocol
        if base_protocol != metrics["protocols"]["safety"]["protocol"]:
            warnings.append(
                f"<p class='warn'>The baseline's safety numbers come from the {html.escape(base_protocol)} protocol, "
                f"this run's from the {html.escape(metrics['protocols']['safety']['protocol'])} protocol: they are "
                "not comparable.</p>"
            )
    if counts["judge_failures"] or counts["generation_failures"]:
        warnings.append(
            f"<p class='warn'>{counts['judge_failures']} judge failure(s) and {counts['generation_failures']} turn(s) "
            "without a reply are left out of the metrics; rerun the same command to retry them.</p>"
        )
    page = PAGE.substitute(
        title=html.escape(metrics["title"]),
        css=CSS,
        subtitle="; ".join(sub) + ".",
        warnings="".join(warnings),
        cards=_cards(overall, base_overall, win),
        headline=_headline_table(overall, base_overall, win),
        turn_plots="".join(turn_plots),
        round_section=round_section,
        winrate_section=winrate_section,
        source_table=_group_table(metrics["by_source"], "data source", base_src),
        category_plot=_img(plots.category_plot(metrics["by_category"], base_cat), "ASR by category"),
        category_table=_group_table(metrics["by_category"], "category", base_cat),
        viewer_note=html.escape(
            f"Showing {shown} of {len(items)} items (unsafe, over-refusing and failed items first). Click an item to open it."
        ),
        footer=html.escape(f"Generated {metrics['generated_at']} from {results_dir.resolve()}."),
        data_json=_json_for_script(viewer),
        js=JS,
    )
    # Both files are written only once everything is computed and rendered, each atomically.
    write_text_atomic(metrics_path, json.dumps(metrics, indent=2, ensure_ascii=False) + "\n")
    report_path = write_text_atomic(results_dir / REPORT_FILE, page)
    return ReportOutput(metrics_path, report_path, metrics)
