"""``python -m am3_verl.eval {run,compare,report,general}``: the evaluation commands (see docs/eval.md)."""

from __future__ import annotations

import argparse
import errno
import logging
import sys
from pathlib import Path
from typing import Any

from am3_verl.clients.endpoint import DEFAULT_TIMEOUT_S
from am3_verl.eval.backends import GenerationParams

JUDGE_FLAGS: tuple[tuple[str, str, type, str], ...] = (
    (
        "judge_backend",
        "backend",
        str,
        "heuristic | openai | llama_guard4 | qwen3guard; required (or env AM3_JUDGE_BACKEND): the judge is never inferred",
    ),
    ("judge_base_url", "base_url", str, "rubric/pairwise judge endpoint .../v1 (env AM3_JUDGE_BASE_URL; key in AM3_JUDGE_API_KEY)"),
    ("judge_model", "model", str, "judge model name (env AM3_JUDGE_MODEL)"),
    ("guard_base_url", "guard_base_url", str, "guard endpoint for the guard backends (env AM3_GUARD_BASE_URL)"),
    ("guard_model", "guard_model", str, "guard model name (env AM3_GUARD_MODEL)"),
    ("helpfulness_backend", "helpfulness_backend", str, "helpfulness judge paired with a guard: openai | heuristic"),
    ("unsafe_threshold", "unsafe_threshold", float, "a turn is unsafe when harmless < this (default 0.5)"),
    ("judge_concurrency", "max_concurrency", int, "judge requests on the wire at once (default 256)"),
    ("judge_timeout_s", "timeout_s", float, f"per-attempt judge timeout in seconds (default {DEFAULT_TIMEOUT_S:g})"),
    ("judge_max_attempts", "max_attempts", int, "attempts per judge call (default 4)"),
)


def _add_judge_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("judge (flags override the AM3_JUDGE_* / AM3_GUARD_* environment)")
    for flag, _, kind, help_text in JUDGE_FLAGS:
        group.add_argument(f"--{flag}", type=kind, default=None, help=help_text)
    group.add_argument(
        "--no_structured_output",
        action="store_true",
        help="do not send a JSON-schema response_format to the judge (for servers without guided decoding)",
    )


def _judge_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    kwargs = {key: getattr(args, flag) for flag, key, _, _ in JUDGE_FLAGS if getattr(args, flag) is not None}
    if args.no_structured_output:
        kwargs["structured_output"] = False
    return kwargs


def _add_report_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--title", default=None, help="report title")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the 95%% intervals (default 1000; 0: none)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (and of sampling, for run) (default 0)")
    parser.add_argument("--viewer_items", type=int, default=200, help="items shown in the dialogue viewer (default 200)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m am3_verl.eval``."""
    parser = argparse.ArgumentParser(prog="python -m am3_verl.eval", description="Evaluate a model's multi-turn safety and write a report.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="generate, judge, compute metrics and write the report")
    run.add_argument("--data", nargs="+", required=True, type=Path, help="evaluation parquet file(s) from data preparation")
    run.add_argument("--model", required=True, help="OpenAI-compatible endpoint (http://host:port/v1) or a local Hugging Face model folder")
    run.add_argument("--model_name", default=None, help="served model name (default: the endpoint's only model); key in AM3_EVAL_API_KEY")
    run.add_argument("--output_dir", required=True, type=Path, help="results folder (rerun with the same folder to resume)")
    run.add_argument(
        "--mode",
        choices=["auto", "prefilled", "interactive"],
        default="auto",
        help="prefilled: keep the data's history, answer the last turn; interactive: answer every turn; "
        "auto (default): prefilled for SafeMT and rows with assistant turns in the prompt, else interactive",
    )
    run.add_argument("--temperature", type=float, default=0.0, help="sampling temperature (default 0: greedy)")
    run.add_argument("--max_tokens", type=int, default=512, help="reply length limit in tokens (default 512)")
    run.add_argument("--top_p", type=float, default=1.0, help="nucleus sampling (default 1.0)")
    run.add_argument("--system_prompt", default=None, help="system prompt for every item (replaces the data's)")
    run.add_argument("--max_turns", type=int, default=None, help="interactive mode: answer at most this many turns per item")
    run.add_argument("--limit", type=int, default=None, help="evaluate only the first N rows")
    run.add_argument("--concurrency", type=int, default=32, help="items in flight at once (default 32)")
    run.add_argument(
        "--model_timeout_s", type=float, default=None, help=f"per-attempt model timeout in seconds (default {DEFAULT_TIMEOUT_S:g})"
    )
    run.add_argument("--model_max_attempts", type=int, default=None, help="attempts per model call (default 4)")
    run.add_argument("--baseline", type=Path, default=None, help="a results folder to compare against (win rates)")
    run.add_argument(
        "--max_failure_rate",
        type=float,
        default=0.05,
        help="exit 1 when more than this share of model calls or of judge calls failed (default 0.05); "
        "the results are kept, so a rerun resumes",
    )
    run.add_argument("--no_progress", action="store_true", help="no progress bars")
    run.add_argument(
        "--judge_protocol",
        choices=["am3", "safemt"],
        default="am3",
        help="how turns are labelled safe/unsafe: am3 (default: the judge's harmless score against "
        "--unsafe_threshold) or safemt (SafeMT's own binary judge prompts by scenario; needs "
        "--safemt_prompts, --judge_base_url and --judge_model). Helpfulness and refusal always come "
        "from --judge_backend",
    )
    run.add_argument(
        "--safemt_prompts", type=Path, default=None, help="--judge_protocol safemt: SafeMT's evaluation/prompt.py (from a SafeMT checkout)"
    )
    run.add_argument(
        "--safemt_temperature",
        type=float,
        default=0.6,
        help="--judge_protocol safemt: temperature of the SafeMT judge call (default 0.6, SafeMT's own)",
    )
    _add_judge_args(run)
    _add_report_args(run)

    compare = sub.add_parser("compare", help="pairwise-compare two results folders and rewrite the report with win rates")
    compare.add_argument("--results", required=True, type=Path, help="results folder of the evaluated model")
    compare.add_argument("--baseline", required=True, type=Path, help="results folder of the baseline")
    compare.add_argument("--concurrency", type=int, default=32, help="comparisons in flight at once (default 32)")
    compare.add_argument("--no_progress", action="store_true", help="no progress bars")
    _add_judge_args(compare)
    _add_report_args(compare)

    general = sub.add_parser("general", help="general ability: answer-matching accuracy on benign VQA files with reference answers")
    general.add_argument(
        "--data",
        nargs="+",
        required=True,
        type=Path,
        help="VQA JSONL file(s) {id, image, question, answer, short_answers?}; one task per file (its stem)",
    )
    general.add_argument("--model", required=True, help="OpenAI-compatible endpoint or a local Hugging Face model folder")
    general.add_argument("--model_name", default=None, help="served model name (default: the endpoint's only model)")
    general.add_argument("--output_dir", required=True, type=Path, help="where results.json, samples_<task>.jsonl and general.md go")
    general.add_argument(
        "--grader",
        required=True,
        choices=["judge", "none"],
        help="free-form items (no short_answers): graded by the judge at --judge_base_url/--judge_model, or none (left ungraded)",
    )
    general.add_argument("--judge_base_url", default=None, help="grader endpoint .../v1 (key in AM3_JUDGE_API_KEY)")
    general.add_argument("--judge_model", default=None, help="grader model name")
    general.add_argument("--baseline", type=Path, default=None, help="another `general` output folder: deltas with bootstrap intervals")
    general.add_argument("--safety", type=Path, default=None, help="a safety results folder (`run`) whose numbers go next to these")
    general.add_argument("--temperature", type=float, default=0.0, help="sampling temperature (default 0: greedy)")
    general.add_argument("--max_tokens", type=int, default=64, help="answer length limit in tokens (default 64)")
    general.add_argument("--concurrency", type=int, default=16, help="questions in flight at once (default 16)")
    general.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the delta interval (default 1000)")
    general.add_argument("--seed", type=int, default=0, help="seed of sampling and of the bootstrap (default 0)")

    report = sub.add_parser("report", help="recompute metrics.json and report.html from results.jsonl")
    report.add_argument("--results", required=True, type=Path, help="results folder")
    report.add_argument("--baseline", type=Path, default=None, help="a results folder to compare against")
    report.add_argument("--unsafe_threshold", type=float, default=None, help="default: the run's (run.json), else 0.5")
    _add_report_args(report)
    return parser


def _fmt(metric: dict[str, Any]) -> str:
    return "n/a" if metric.get("value") is None else f"{metric['value']:.3f}"


def _require_folder(path: Path, flag: str) -> None:
    """Raise ``ValueError`` when ``path`` cannot be a folder: it, or the nearest existing path above it, is not one."""
    for existing in (path, *path.parents):
        if existing.exists() or existing.is_symlink():
            if existing.is_dir():
                return
            if existing == path:
                raise ValueError(f"{flag} {path} exists and is not a folder")
            raise ValueError(f"{flag} {path} cannot be a folder: {existing} exists and is not a folder")


def _os_error_line(exc: OSError, command: str) -> str:
    """The one-line message for an ``OSError`` that ended a command (a full disk, a folder that cannot be written)."""
    target = f" ({exc.filename})" if exc.filename else ""
    if exc.errno == errno.ENOSPC:
        again = "rerun the same command to resume" if command in ("run", "compare") else "rerun the command"
        return (f"no space left on device while writing{target}; outputs are written under temporary names, so no "
                f"incomplete output was kept. Free some space, then {again}.")  # fmt: skip
    return f"{exc.strerror or exc}{target}"


def main(argv: list[str] | None = None) -> int:
    """Command-line entry; returns the exit status (2 for bad input, with the reason on stderr; 1 when the
    operating system refused, e.g. a full disk, with one line saying so)."""
    from am3_verl.eval.cache import CacheFormatError
    from am3_verl.eval.lock import OutputFolderBusy, output_folder_lock
    from am3_verl.eval.report import write_report
    from am3_verl.eval.results import ResultsFormatError
    from am3_verl.eval.runner import RunConfig, compare_runs, run_eval
    from am3_verl.judges.config import resolve_judge_config

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command in ("run", "general"):
            _require_folder(args.output_dir, "--output_dir")
        else:
            _require_folder(args.results, "--results")
        if args.command == "run":
            config = RunConfig(
                data=args.data,
                output_dir=args.output_dir,
                model=args.model,
                model_name=args.model_name,
                mode=args.mode,
                params=GenerationParams(temperature=args.temperature, max_tokens=args.max_tokens, top_p=args.top_p, seed=args.seed),
                judge=_judge_kwargs(args),
                system_prompt=args.system_prompt,
                max_turns=args.max_turns,
                limit=args.limit,
                concurrency=args.concurrency,
                model_timeout_s=args.model_timeout_s,
                model_max_attempts=args.model_max_attempts,
                baseline=args.baseline,
                title=args.title,
                n_resamples=args.bootstrap,
                seed=args.seed,
                viewer_items=args.viewer_items,
                progress=not args.no_progress,
                judge_protocol=args.judge_protocol,
                safemt_prompts=args.safemt_prompts,
                safemt_temperature=args.safemt_temperature,
            )
            summary = run_eval(config)
            print(summary.paragraph())
            failing = {who: share for who, share in summary.failure_shares().items() if share > args.max_failure_rate}
            if failing:
                print("error: " + "; ".join(f"{share:.0%} of the {who} calls failed" for who, share in failing.items())
                      + f" (more than --max_failure_rate {args.max_failure_rate}): the metrics above are not trustworthy. "
                      f"Check the endpoint, model name and key, then rerun the same command to retry the failed calls.",
                      file=sys.stderr)  # fmt: skip
                return 1
        elif args.command == "general":
            from am3_verl.eval.general import GeneralConfig, run_general

            summary = run_general(
                GeneralConfig(
                    data=args.data,
                    output_dir=args.output_dir,
                    model=args.model,
                    grader=args.grader,
                    model_name=args.model_name,
                    params=GenerationParams(temperature=args.temperature, max_tokens=args.max_tokens, seed=args.seed),
                    judge_base_url=args.judge_base_url,
                    judge_model=args.judge_model,
                    baseline=args.baseline,
                    safety=args.safety,
                    concurrency=args.concurrency,
                    n_resamples=args.bootstrap,
                    seed=args.seed,
                )
            )
            print(summary.table, end="")
            print(summary.paragraph())
        elif args.command == "compare":
            judge = resolve_judge_config(_judge_kwargs(args))
            with output_folder_lock(args.results):
                pairwise = compare_runs(args.results, args.baseline, judge, concurrency=args.concurrency, progress=not args.no_progress)
                out = write_report(
                    args.results,
                    args.baseline,
                    title=args.title,
                    n_resamples=args.bootstrap,
                    seed=args.seed,
                    viewer_items=args.viewer_items,
                )
            wr = out.metrics["win_rates"]
            print(
                f"Compared {args.results} with {args.baseline} by {pairwise.method}: {pairwise.counts['turns_compared']} turns "
                f"({pairwise.counts['comparisons_failed']} failed, {pairwise.counts['items_unmatched']} items without a baseline "
                f"match, {pairwise.counts['turns_skipped']} turns skipped); helpful win rate {_fmt(wr['helpful'])}, harmless win "
                f"rate {_fmt(wr['harmless'])}. Report: {out.report_path}."
            )
        else:
            with output_folder_lock(args.results):
                out = write_report(
                    args.results,
                    args.baseline,
                    title=args.title,
                    unsafe_threshold=args.unsafe_threshold,
                    n_resamples=args.bootstrap,
                    seed=args.seed,
                    viewer_items=args.viewer_items,
                )
            o = out.metrics["overall"]
            print(
                f"Wrote {out.metrics_path} and {out.report_path} for {out.metrics['counts']['items']} items: ASR {_fmt(o['asr'])}, "
                f"Safety Index {_fmt(o['safety_index'])}, harmless {_fmt(o['harmless'])}, helpful {_fmt(o['helpful'])}, "
                f"over-refusal {_fmt(o['over_refusal'])}."
            )
    except (ValueError, FileNotFoundError, ResultsFormatError, CacheFormatError, OutputFolderBusy) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: {_os_error_line(exc, args.command)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if args.command == "general":
            print("interrupted: the general-ability run writes its outputs only when complete; rerun it.", file=sys.stderr)
            return 130
        folder = args.output_dir if args.command == "run" else args.results
        print(f"interrupted: every answer and judgment finished so far is kept in {folder}; rerun the same command to "
              "resume from there.", file=sys.stderr)  # fmt: skip
        return 130
    return 0
