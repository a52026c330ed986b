"""Refusal VQA (+ general benign VQA) -> the cold-start SFT parquet verl's ``MultiTurnSFTDataset`` reads.

Outputs in ``--output_dir``:

* ``cold_start.parquet`` – ``messages`` (optional system message, the user question with one ``<image>``
  placeholder, the reference answer), ``images`` (``[{"bytes": ...}]``), ``data_source``
  (``refusal_vqa`` / ``general_vqa``), ``extra_info`` (index, id, domain, kind, split). The training
  refusal samples come first, in input order, then the general samples; verl's SFT trainer shuffles.
* ``cold_start_val.parquet`` and ``refusal_eval.parquet`` – only with ``--val_size``/``--val_ratio``:
  the held-out refusal samples (stratified by domain) in SFT form, and the same samples in the RL/eval
  prompt form (``prompt``, ``images``, ``reference_answer`` in ``extra_info``) for evaluation.
* ``rejects.jsonl`` – one row per bad record, with an ``input`` key naming its file.

The mix: ``round(general_ratio * training refusal samples)`` general samples, the first valid ones in
the general file; reading stops once that many are written (records after that point are not read and
not counted). Too few valid general samples is an error.
"""

from __future__ import annotations

import argparse
from contextlib import closing
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
from pydantic import ValidationError

from am3_verl.data.card import CARD_FILE, CardConfig, DatasetCard, column_counts, render_card
from am3_verl.data.cli import progress_bar
from am3_verl.data.conversion import (
    Conversion,
    Output,
    add_common_args,
    common_options,
    duplicate_assignment,
    duplicate_of,
    planned_tasks,
)
from am3_verl.data.errors import DataPrepError
from am3_verl.data.images import ImageCheckError, ImagePolicy, prepare_image, read_image_source
from am3_verl.data.pipeline import IMAGE_TYPE, MESSAGES_TYPE, REJECTED, ParquetSink, RowBuilder, RunCounts
from am3_verl.data.readers import RecordSource, normalise_image_entry, open_source
from am3_verl.data.splits import resolve_val_count, stratified_val_positions
from am3_verl.data.validate import REJECTS_FILE, Reject, RejectWriter, read_record, reject_from_validation_error, record_id_of
from am3_verl.dialogue import IMAGE_PLACEHOLDER, RefusalSample

REFUSAL_SOURCE, GENERAL_SOURCE = "refusal_vqa", "general_vqa"
TRAIN, VAL, EVAL, GENERAL = "train", "val", "eval", "general"
OUTPUT_FILES = {TRAIN: "cold_start.parquet", VAL: "cold_start_val.parquet", EVAL: "refusal_eval.parquet"}
DEFAULT_SEED = 42
DEFAULT_GENERAL_RATIO = 1.0
EVAL_AGENT_NAME = "single_turn_agent"
DOMAINS = ("general", "health", "finance")

SFT_SCHEMA = pa.schema(
    [
        pa.field("messages", MESSAGES_TYPE),
        pa.field("images", IMAGE_TYPE),
        pa.field("data_source", pa.string()),
        pa.field(
            "extra_info",
            pa.struct(
                [
                    pa.field("index", pa.int64()),
                    pa.field("id", pa.string()),
                    pa.field("domain", pa.string()),
                    pa.field("kind", pa.string()),
                    pa.field("split", pa.string()),
                ]
            ),
        ),
    ]
)
"""Columns of ``cold_start.parquet`` and ``cold_start_val.parquet``."""

EVAL_SCHEMA = pa.schema(
    [
        pa.field("prompt", MESSAGES_TYPE),
        pa.field("images", IMAGE_TYPE),
        pa.field("agent_name", pa.string()),
        pa.field("data_source", pa.string()),
        pa.field("reward_model", pa.struct([pa.field("style", pa.string()), pa.field("ground_truth", pa.string())])),
        pa.field(
            "extra_info",
            pa.struct(
                [
                    pa.field("index", pa.int64()),
                    pa.field("id", pa.string()),
                    pa.field("domain", pa.string()),
                    pa.field("kind", pa.string()),
                    pa.field("split", pa.string()),
                    pa.field("reference_answer", pa.string()),
                ]
            ),
        ),
    ]
)
"""Columns of ``refusal_eval.parquet`` (RLHFDataset-compatible prompt form)."""
OUTPUTS = {
    TRAIN: Output(OUTPUT_FILES[TRAIN], SFT_SCHEMA),
    GENERAL: Output(OUTPUT_FILES[TRAIN], SFT_SCHEMA),  # general samples go to the training file, after the refusals
    VAL: Output(OUTPUT_FILES[VAL], SFT_SCHEMA),
    EVAL: Output(OUTPUT_FILES[EVAL], EVAL_SCHEMA),
}


@dataclass(frozen=True)
class VqaJob:
    """What a worker needs to convert VQA samples (picklable)."""

    base_dir: Path
    policy: ImagePolicy
    kind: str
    """``refusal`` or ``general``."""
    system_prompt: str | None


def _user_content(question: str) -> str:
    return question if IMAGE_PLACEHOLDER in question else f"{IMAGE_PLACEHOLDER}\n{question}"


def _convert_one(position: int, payload: Any, assignment: str, job: VqaJob, out: RowBuilder) -> None:
    record = read_record(position, payload)
    if isinstance(record, Reject):
        out.reject(record)
        return
    record_id = record_id_of(record)
    if "image" in record:
        record = {**record, "image": normalise_image_entry(record["image"])}
    try:
        sample = RefusalSample.model_validate(record)
    except ValidationError as exc:
        out.reject(reject_from_validation_error(position, record_id, exc))
        return
    first = duplicate_of(assignment)
    if first is not None:
        out.reject(Reject(position, sample.id, "id", f"duplicate id: already used by {first}"))
        return
    if sample.question.count(IMAGE_PLACEHOLDER) > 1:
        out.reject(
            Reject(
                position,
                sample.id,
                "question",
                f"{sample.question.count(IMAGE_PLACEHOLDER)} {IMAGE_PLACEHOLDER} placeholders but one image",
            )
        )
        return
    try:
        data, resized = prepare_image(read_image_source(sample.image, job.base_dir, job.policy), job.policy)
    except ImageCheckError as exc:
        out.reject(Reject(position, sample.id, "image", str(exc)))
        return
    out.images += 1
    out.resized += resized
    system = [{"role": "system", "content": job.system_prompt}] if job.system_prompt else []
    user = {"role": "user", "content": _user_content(sample.question)}
    split = VAL if assignment == VAL else TRAIN
    info = {"index": position, "id": sample.id, "domain": sample.domain, "kind": job.kind, "split": split}
    source = REFUSAL_SOURCE if job.kind == "refusal" else GENERAL_SOURCE
    sft_row = {
        "messages": [*system, user, {"role": "assistant", "content": sample.answer}],
        "images": [{"bytes": data}],
        "data_source": source,
        "extra_info": info,
    }
    if assignment == VAL:
        out.add(position, VAL, sft_row)
        out.also(
            EVAL,
            {
                "prompt": [*system, user],
                "images": [{"bytes": data}],
                "agent_name": EVAL_AGENT_NAME,
                "data_source": source,
                "reward_model": {"style": "judge", "ground_truth": sample.domain},
                "extra_info": {**info, "reference_answer": sample.answer},
            },
        )
    elif assignment in (TRAIN, GENERAL):
        out.add(position, assignment, sft_row)
    else:
        raise RuntimeError(f"record {position} validated but was not assigned a split ({assignment!r})")


def _plan(
    source: RecordSource,
    seen: dict[str, str],
    label: str,
    default: str,
    val_size: int | None = None,
    val_ratio: float | None = None,
    seed: int = DEFAULT_SEED,
) -> tuple[dict[int, str], int, int]:
    """First pass over one file: duplicate ids (also against ``seen``), and the stratified validation set."""
    assignment: dict[int, str] = {}
    keyed: list[tuple[int, str, str]] = []
    n_records = 0
    for position, key in source.keys(("id", "domain")):
        n_records += 1
        if key is None or not isinstance(key.get("id"), str) or not key["id"].strip() or key.get("domain") not in DOMAINS:
            continue
        record_id = key["id"]
        if record_id in seen:
            assignment[position] = duplicate_assignment(seen[record_id])
            continue
        seen[record_id] = f"{label} record {position}"
        keyed.append((position, record_id, key["domain"]))
    if n_records == 0:
        raise DataPrepError(f"{source.path} holds no records")
    try:
        n_val = resolve_val_count(len(keyed), val_size, val_ratio)
    except ValueError as exc:
        raise DataPrepError(str(exc)) from exc
    val = stratified_val_positions(keyed, n_val, seed)
    for position, _, _ in keyed:
        assignment[position] = VAL if position in val else default
    return assignment, n_records, n_val


@dataclass
class ColdStartSummary:
    """The outcome of :func:`convert_cold_start`."""

    output_dir: Path
    refusal: RunCounts
    general: RunCounts | None
    general_wanted: int
    n_val: int
    seconds: float
    workers: int

    def paragraph(self) -> str:
        """The one-paragraph summary printed at the end of a run."""
        r = self.refusal
        train, val = r.written.get(TRAIN, 0), r.written.get(VAL, 0)
        text = (
            f"Refusal VQA: read {r.read} = written {train + val} + rejected {r.rejected} "
            f"({train} for training, {val} held out for validation and evaluation). "
        )
        if self.general is not None:
            g = self.general
            text += (
                f"General VQA: read {g.read} = written {g.written.get(GENERAL, 0)} + rejected {g.rejected} "
                f"({self.general_wanted} wanted by the mix ratio; reading stopped there). "
            )
        files = [OUTPUT_FILES[TRAIN]] + ([OUTPUT_FILES[VAL], OUTPUT_FILES[EVAL]] if self.n_val else [])
        images = r.images + (self.general.images if self.general else 0)
        resized = r.resized + (self.general.resized if self.general else 0)
        return (
            text + f"Wrote {', '.join(files)} and {REJECTS_FILE} to {self.output_dir}; {images} images stored "
            f"({resized} shrunk); {self.seconds:.1f} s on {self.workers} worker(s)."
        )


def convert_cold_start(
    refusal_path: str | Path,
    output_dir: str | Path,
    *,
    general_path: str | Path | None = None,
    general_ratio: float = DEFAULT_GENERAL_RATIO,
    val_size: int | None = None,
    val_ratio: float | None = None,
    seed: int = DEFAULT_SEED,
    system_prompt: str | None = None,
    policy: ImagePolicy = ImagePolicy(),
    image_root: str | Path | None = None,
    workers: int | None = None,
    chunk_size: int = 32,
    row_group_rows: int = 256,
    progress: bool = True,
) -> ColdStartSummary:
    """Write the cold-start SFT parquet (and, with a validation split, the val and eval files).

    Raises :class:`DataPrepError` for unreadable inputs, no training sample, or too few general samples
    for the requested ratio. Output is byte-for-byte identical for the same inputs, options and seed.
    """
    if general_ratio < 0:
        raise DataPrepError(f"--general_ratio must be >= 0, got {general_ratio}")
    refusal_source = open_source(refusal_path, image_root)
    general_source = open_source(general_path, image_root) if general_path is not None else None
    with Conversion(output_dir, workers=workers, chunk_size=chunk_size, row_group_rows=row_group_rows, progress=progress) as run:
        seen: dict[str, str] = {}
        refusal_plan, n_refusal, n_val = _plan(refusal_source, seen, "refusal", TRAIN, val_size, val_ratio, seed)
        general_plan, n_general, _ = _plan(general_source, seen, "general", GENERAL) if general_source is not None else ({}, 0, 0)
        names = [TRAIN, GENERAL] + ([VAL, EVAL] if n_val else [])
        rejects = run.open({name: OUTPUTS[name] for name in names})
        rejects.input_name = str(refusal_path)
        refusal_counts = run.convert(
            _convert_one,
            VqaJob(refusal_source.base_dir, policy, "refusal", system_prompt),
            planned_tasks(refusal_source, refusal_plan),
            total=n_refusal,
            desc="refusal_vqa",
        )
        if refusal_counts.written.get(TRAIN, 0) == 0:
            raise run.fail(
                f"no refusal sample was written for training ({refusal_counts.rejected} rejected; see {run.out_dir / REJECTS_FILE})"
            )
        general_counts: RunCounts | None = None
        wanted = 0
        if general_source is not None:
            wanted = int(general_ratio * refusal_counts.written[TRAIN] + 0.5)
            rejects.input_name = str(general_path)
            job = VqaJob(general_source.base_dir, policy, "general", system_prompt)
            bar = progress_bar(wanted, "general_vqa", progress)
            try:
                with closing(run.results(_convert_one, job, planned_tasks(general_source, general_plan))) as results:
                    general_counts = _drive_until(results, run.sinks[GENERAL], rejects, wanted, bar)
            finally:
                bar.close()
            general_counts.check()
            if general_counts.written.get(GENERAL, 0) < wanted:
                raise run.fail(
                    f"--general_ratio {general_ratio} asks for {wanted} general samples but {general_path} has only "
                    f"{general_counts.written.get(GENERAL, 0)} valid ones ({general_counts.rejected} rejected of "
                    f"{n_general}); lower the ratio or add samples"
                )
        run.close()  # the card's distributions are read from the finished parquet files
        files = [name for name in names if name in OUTPUT_FILES]  # general samples share the training file
        card = _card(
            {name: run.sinks[name].path for name in files},
            files,
            refusal_path,
            general_path,
            general_ratio,
            wanted,
            n_val,
            seed,
            system_prompt,
            policy,
        )
        run.write_text(CARD_FILE, render_card(card))
        # outputs this run does not produce (e.g. an earlier run's refusal_eval.parquet) must not linger
        run.commit(stale=[OUTPUT_FILES[name] for name in (VAL, EVAL) if name not in names])
        return ColdStartSummary(run.out_dir, refusal_counts, general_counts, wanted, n_val, run.seconds, run.workers)


def _card(
    staged_paths: dict[str, Path],
    names: list[str],
    refusal_path: str | Path,
    general_path: str | Path | None,
    general_ratio: float,
    wanted: int,
    n_val: int,
    seed: int,
    system_prompt: str | None,
    policy: ImagePolicy,
) -> DatasetCard:
    """The dataset card of a cold-start folder (its distributions read from the staged parquet files)."""
    sft = {TRAIN: "train", VAL: "validation"}
    configs = [CardConfig("default", {sft[name]: OUTPUT_FILES[name] for name in names if name in sft}, default=True)]
    if EVAL in names:
        configs.append(CardConfig("refusal_eval", {"test": OUTPUT_FILES[EVAL]}))
    distributions = {}
    n_records = 0
    for name in names:
        kinds = column_counts([staged_paths[name]], "extra_info.kind")
        domains = column_counts([staged_paths[name]], "extra_info.domain")
        n_records += sum(kinds.values())
        distributions[f"kind ({OUTPUT_FILES[name]})"] = kinds
        distributions[f"domain ({OUTPUT_FILES[name]})"] = domains
    return DatasetCard(
        pretty_name="AM3 cold-start SFT (refusal VQA + general VQA, am3-verl)",
        summary=(
            "Refusal-template learning data: refusal-VQA samples (an image, a harmful or professional-advice "
            "question, and a refusal that explains itself) mixed with benign VQA samples, as chat `messages` for "
            "verl's multi-turn SFT trainer; `refusal_eval.parquet` holds held-out refusal questions in prompt form "
            "for evaluation. Written by `data_prep/cold_start.py`."
        ),
        configs=configs,
        n_records=n_records,
        task_categories=["image-text-to-text", "visual-question-answering"],
        distributions=distributions,
        settings={
            "command": "data_prep/cold_start.py",
            "refusal_input": Path(refusal_path).name,
            "general_input": Path(general_path).name if general_path is not None else None,
            "general_ratio": general_ratio,
            "general_samples": wanted,
            "validation_samples": n_val,
            "seed": seed,
            "system_prompt": system_prompt,
            "image_policy": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(policy).items()},
        },
        files={REJECTS_FILE: "records that could not be converted, with the field and reason"},
        tags=["safety", "multimodal", "refusal", "am3-verl"],
    )


def _drive_until(results: Any, sink: ParquetSink, rejects: RejectWriter, wanted: int, bar: Any) -> RunCounts:
    """Like :func:`drive` for the general file, stopping right after the ``wanted``-th written sample."""
    counts = RunCounts(written={GENERAL: 0})
    if wanted == 0:
        return counts
    for result in results:
        batch = result.load_batches().get(GENERAL)
        rows_taken = 0
        pending_rejects = iter(result.rejects)
        consumed = 0
        for _, name in result.outcomes:
            consumed += 1
            counts.read += 1
            if name == REJECTED:
                counts.rejected += 1
                rejects.write(next(pending_rejects))
            else:
                rows_taken += 1
                counts.written[GENERAL] += 1
                counts.images += 1
            if counts.written[GENERAL] == wanted:
                break
        if batch is not None and rows_taken:
            sink.write(batch.slice(0, rows_taken))
        if consumed == len(result.outcomes):
            counts.resized += result.resized
        bar.update(rows_taken)
        if counts.written[GENERAL] == wanted:
            break
    return counts


def build_parser() -> argparse.ArgumentParser:
    """The ``data_prep/cold_start.py`` argument parser."""
    parser = argparse.ArgumentParser(description="Build the cold-start SFT parquet from refusal VQA and general VQA samples.")
    parser.add_argument("--refusal", required=True, help="refusal VQA samples: .jsonl, .json, .parquet or a datasets folder")
    parser.add_argument("--general", default=None, help="general benign VQA samples in the same shape (optional)")
    parser.add_argument(
        "--general_ratio",
        type=float,
        default=DEFAULT_GENERAL_RATIO,
        help=f"general samples per training refusal sample (default {DEFAULT_GENERAL_RATIO:g})",
    )
    split = parser.add_mutually_exclusive_group()
    split.add_argument("--val_size", type=int, default=None, help="refusal samples held out (default none)")
    split.add_argument("--val_ratio", type=float, default=None, help="fraction of refusal samples held out")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"split seed (default {DEFAULT_SEED})")
    parser.add_argument("--system_prompt", default=None, help="system message put first in every conversation")
    add_common_args(parser, "cold_start*.parquet, refusal_eval.parquet, rejects.jsonl")
    return parser


def main(argv: list[str] | None = None) -> ColdStartSummary:
    """Command line entry; prints the summary paragraph."""
    args = build_parser().parse_args(argv)
    summary = convert_cold_start(
        args.refusal,
        args.output_dir,
        general_path=args.general,
        general_ratio=args.general_ratio,
        val_size=args.val_size,
        val_ratio=args.val_ratio,
        seed=args.seed,
        system_prompt=args.system_prompt,
        **common_options(args),
    )
    print(summary.paragraph())
    return summary
