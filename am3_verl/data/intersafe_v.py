"""InterSafe-V dialogues -> verl RL parquet (``rl_train.parquet``, ``rl_val.parquet``) + ``rejects.jsonl``.

One row per dialogue, in input order (see docs/data.md for every column):

* ``prompt`` – ``[{"role": "user", "content": <first user text with <image> placeholders>}]``
* ``images`` – the first turn's images as ``{"bytes": ...}`` (possibly empty)
* ``am3_later_turns`` – user turns 2..T: ``{"user", "images": [{"bytes"}], "assistant": str | None}``
* ``agent_name`` = ``"am3_dialogue"``, ``data_source`` = ``"intersafe_v"``
* ``reward_model`` = ``{"style": "judge", "ground_truth": <category>}``
* ``extra_info`` = ``{"index": <input position>, "id", "category", "num_turns", "harmful", "split",
  "reference_first_reply"}``
* ``am3_meta`` – ``{"source", "meta"}`` of the input record as a JSON string

Two passes over the input: a cheap one (ids and categories only) fixes the stratified split and finds
duplicate ids; the second validates and converts every record on a process pool, streaming rows to the
two parquet files.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
from pydantic import ValidationError

from am3_verl.data.card import CARD_FILE, CardConfig, DatasetCard, render_card
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
from am3_verl.data.pipeline import IMAGE_TYPE, MESSAGES_TYPE, RowBuilder, RunCounts
from am3_verl.data.readers import RecordSource, normalise_image_entry, normalise_nulls, open_source
from am3_verl.data.splits import resolve_val_count, stratified_val_positions
from am3_verl.data.validate import REJECTS_FILE, Reject, read_record, reject_from_validation_error, record_id_of
from am3_verl.dialogue import BENIGN, Dialogue

AGENT_NAME = "am3_dialogue"
DATA_SOURCE = "intersafe_v"
TRAIN, VAL = "train", "val"
OUTPUT_FILES = {TRAIN: "rl_train.parquet", VAL: "rl_val.parquet"}
DEFAULT_VAL_RATIO = 0.05
DEFAULT_SEED = 42

RL_SCHEMA = pa.schema(
    [
        pa.field("prompt", MESSAGES_TYPE),
        pa.field("images", IMAGE_TYPE),
        pa.field(
            "am3_later_turns",
            pa.list_(pa.struct([pa.field("user", pa.string()), pa.field("images", IMAGE_TYPE), pa.field("assistant", pa.string())])),
        ),
        pa.field("agent_name", pa.string()),
        pa.field("data_source", pa.string()),
        pa.field("reward_model", pa.struct([pa.field("style", pa.string()), pa.field("ground_truth", pa.string())])),
        pa.field(
            "extra_info",
            pa.struct(
                [
                    pa.field("index", pa.int64()),
                    pa.field("id", pa.string()),
                    pa.field("category", pa.string()),
                    pa.field("num_turns", pa.int64()),
                    pa.field("harmful", pa.bool_()),
                    pa.field("split", pa.string()),
                    pa.field("reference_first_reply", pa.string()),
                ]
            ),
        ),
        pa.field("am3_meta", pa.string()),
    ]
)
"""The columns of ``rl_train.parquet`` / ``rl_val.parquet`` (fixed order)."""
OUTPUTS = {name: Output(filename, RL_SCHEMA) for name, filename in OUTPUT_FILES.items()}


@dataclass(frozen=True)
class DialogueJob:
    """What a worker needs to convert dialogues (picklable)."""

    base_dir: Path
    policy: ImagePolicy
    categories: tuple[str, ...] | None = None
    """``--categories``: the only categories accepted (``benign`` always is); None accepts any."""


def _normalise(record: dict[str, Any]) -> dict[str, Any]:
    record = normalise_nulls(record, ("source", "meta"))
    turns = record.get("turns")
    if isinstance(turns, list):
        fixed = []
        for turn in turns:
            if isinstance(turn, dict):
                turn = normalise_nulls(turn, ("images", "assistant"))
                if isinstance(turn.get("images"), list):
                    turn = {**turn, "images": [normalise_image_entry(e) for e in turn["images"]]}
            fixed.append(turn)
        record = {**record, "turns": fixed}
    return record


def _convert_one(position: int, payload: Any, assignment: str, job: DialogueJob, out: RowBuilder) -> None:
    record = read_record(position, payload)
    if isinstance(record, Reject):
        out.reject(record)
        return
    record_id = record_id_of(record)
    try:
        dialogue = Dialogue.model_validate(_normalise(record))
    except ValidationError as exc:
        out.reject(reject_from_validation_error(position, record_id, exc))
        return
    if job.categories is not None and dialogue.category not in job.categories and dialogue.category != BENIGN:
        out.reject(Reject(position, dialogue.id, "category", f"category {dialogue.category!r} is not in --categories"))
        return
    first = duplicate_of(assignment)
    if first is not None:
        out.reject(Reject(position, dialogue.id, "id", f"duplicate id: already used by record {first}"))
        return
    if assignment not in (TRAIN, VAL):
        raise RuntimeError(f"record {position} validated but was not assigned a split ({assignment!r})")
    turn_images: list[list[dict[str, bytes]]] = []
    problems: list[dict[str, str]] = []
    resized = 0
    for t, turn in enumerate(dialogue.turns):
        stored = []
        for k, entry in enumerate(turn.images):
            try:
                data, was_resized = prepare_image(read_image_source(entry, job.base_dir, job.policy), job.policy)
            except ImageCheckError as exc:
                problems.append({"field": f"turns[{t}].images[{k}]", "reason": str(exc)})
                continue
            stored.append({"bytes": data})
            resized += was_resized
        turn_images.append(stored)
    if problems:
        out.reject(Reject(position, dialogue.id, problems[0]["field"], problems[0]["reason"], problems[1:]))
        return
    first = dialogue.turns[0]
    out.add(
        position,
        assignment,
        {
            "prompt": [{"role": "user", "content": first.user}],
            "images": turn_images[0],
            "am3_later_turns": [
                {"user": turn.user, "images": turn_images[t], "assistant": turn.assistant} for t, turn in enumerate(dialogue.turns) if t > 0
            ],
            "agent_name": AGENT_NAME,
            "data_source": DATA_SOURCE,
            "reward_model": {"style": "judge", "ground_truth": dialogue.category},
            "extra_info": {
                "index": position,
                "id": dialogue.id,
                "category": dialogue.category,
                "num_turns": len(dialogue.turns),
                "harmful": dialogue.category != BENIGN,
                "split": assignment,
                "reference_first_reply": first.assistant,
            },
            "am3_meta": json.dumps({"source": dialogue.source, "meta": dialogue.meta}, ensure_ascii=False, sort_keys=True, default=str),
        },
    )
    out.images += sum(len(images) for images in turn_images)
    out.resized += resized


@dataclass
class SplitPlan:
    """The first pass's result: split per position, duplicate ids, categories."""

    assignment: dict[int, str]
    categories: dict[int, str]
    n_records: int
    n_val: int
    duplicates: int


def plan_split(source: RecordSource, val_size: int | None, val_ratio: float | None, seed: int) -> SplitPlan:
    """First pass: read ids and categories, mark duplicate ids, choose the stratified validation set."""
    assignment: dict[int, str] = {}
    categories: dict[int, str] = {}
    first_seen: dict[str, int] = {}
    keyed: list[tuple[int, str, str]] = []
    n_records = duplicates = 0
    for position, key in source.keys(("id", "category")):
        n_records += 1
        if key is None:
            continue
        record_id, category = key.get("id"), key.get("category")
        if not (isinstance(record_id, str) and record_id.strip() and isinstance(category, str) and category.strip()):
            continue
        categories[position] = category
        if record_id in first_seen:
            assignment[position] = duplicate_assignment(first_seen[record_id])
            duplicates += 1
            continue
        first_seen[record_id] = position
        keyed.append((position, record_id, category))
    if n_records == 0:
        raise DataPrepError(f"{source.path} holds no records")
    try:
        n_val = resolve_val_count(len(keyed), val_size, val_ratio)
    except ValueError as exc:
        raise DataPrepError(str(exc)) from exc
    val = stratified_val_positions(keyed, n_val, seed)
    for position, _, _ in keyed:
        assignment[position] = VAL if position in val else TRAIN
    return SplitPlan(assignment, categories, n_records, n_val, duplicates)


@dataclass
class IntersafeSummary:
    """The outcome of :func:`convert_intersafe_v`."""

    input: Path
    output_dir: Path
    counts: RunCounts
    seed: int
    n_val_planned: int
    categories: dict[str, Counter] = field(default_factory=dict)
    rejects_by_field: dict[str, int] = field(default_factory=dict)
    workers: int = 1
    seconds: float = 0.0

    def paragraph(self) -> str:
        """The one-paragraph summary printed at the end of a run."""
        c = self.counts
        train, val = c.written.get(TRAIN, 0), c.written.get(VAL, 0)
        cats = self.categories.get(TRAIN, Counter()) + self.categories.get(VAL, Counter())
        reasons = ", ".join(f"{n} in {name}" for name, n in sorted(self.rejects_by_field.items())) or "none"
        return (
            f"Converted {self.input}: read {c.read} dialogues = written {train + val} + rejected {c.rejected}. "
            f"{train} went to {self.output_dir / OUTPUT_FILES[TRAIN]} and {val} to {self.output_dir / OUTPUT_FILES[VAL]} "
            f"(stratified by category, seed {self.seed}, {self.n_val_planned} planned for validation). "
            f"Rejects ({reasons}) are listed in {self.output_dir / REJECTS_FILE}. "
            f"{c.images} images stored ({c.resized} shrunk). "
            f"{len(cats)} categories: " + ", ".join(f"{k} {v}" for k, v in sorted(cats.items())) + ". "
            f"{self.seconds:.1f} s on {self.workers} worker(s)."
        )


def convert_intersafe_v(
    input_path: str | Path,
    output_dir: str | Path,
    *,
    val_size: int | None = None,
    val_ratio: float | None = None,
    seed: int = DEFAULT_SEED,
    policy: ImagePolicy = ImagePolicy(),
    image_root: str | Path | None = None,
    workers: int | None = None,
    chunk_size: int = 32,
    row_group_rows: int = 256,
    progress: bool = True,
    allowed_categories: tuple[str, ...] | None = None,
) -> IntersafeSummary:
    """Convert an InterSafe-V file to ``rl_train.parquet``, ``rl_val.parquet`` and ``rejects.jsonl``.

    Every record is validated; bad ones go to the rejects file and the run continues. Raises
    :class:`DataPrepError` for an unreadable input, an impossible split, an empty or blank name in
    ``allowed_categories`` (or none at all), or an empty training set.
    The files are byte-for-byte identical for the same input, options and seed, whatever ``workers``.
    """
    if val_size is None and val_ratio is None:
        val_ratio = DEFAULT_VAL_RATIO
    check_categories(allowed_categories)
    source = open_source(input_path, image_root)
    with Conversion(output_dir, workers=workers, chunk_size=chunk_size, row_group_rows=row_group_rows, progress=progress) as run:
        plan = plan_split(source, val_size, val_ratio, seed)
        categories: dict[str, Counter] = {TRAIN: Counter(), VAL: Counter()}

        def tally(position: int, name: str) -> None:
            if name in categories:
                categories[name][plan.categories[position]] += 1

        rejects = run.open(OUTPUTS)
        counts = run.convert(
            _convert_one,
            DialogueJob(source.base_dir, policy, allowed_categories),
            planned_tasks(source, plan.assignment),
            total=plan.n_records,
            desc="intersafe_v",
            on_outcome=tally,
        )
        if counts.written.get(TRAIN, 0) == 0:
            raise run.fail(
                f"no dialogue was written to the training set ({counts.rejected} of {counts.read} rejected; "
                f"see {run.out_dir / REJECTS_FILE})"
            )
        summary = IntersafeSummary(
            Path(input_path), run.out_dir, counts, seed, plan.n_val, categories, dict(rejects.by_field), run.workers, run.seconds
        )
        run.write_text(CARD_FILE, render_card(_card(summary, val_size, val_ratio, policy, allowed_categories)))
        run.commit()
        return summary


def parse_categories(text: str | None) -> tuple[str, ...] | None:
    """``--categories`` as a tuple of stripped names (None when the flag is absent); checked by :func:`check_categories`."""
    if text is None:
        return None
    names = tuple(name.strip() for name in text.split(","))
    check_categories(names)
    return names


def check_categories(names: tuple[str, ...] | None) -> None:
    """Raise :class:`DataPrepError` for an empty list or an empty name (either would reject every harmful dialogue)."""
    if names is None:
        return
    if not any(name.strip() for name in names):
        raise DataPrepError(
            "--categories names no category: it would reject every harmful dialogue; "
            "leave it out to accept any category, or list the ones to keep (comma-separated)"
        )
    if not all(name.strip() for name in names):
        raise DataPrepError(f"--categories {','.join(names)!r} holds an empty name (a stray comma?)")


def _card(
    summary: IntersafeSummary,
    val_size: int | None,
    val_ratio: float | None,
    policy: ImagePolicy,
    allowed_categories: tuple[str, ...] | None,
) -> DatasetCard:
    """The dataset card of a converted InterSafe-V folder."""
    c = summary.counts
    return DatasetCard(
        pretty_name="InterSafe-V (verl RL parquet, am3-verl)",
        summary=(
            "Multi-turn multimodal attack dialogues in verl's RL parquet form: `prompt` is the first user turn "
            "(images in `images`), `am3_later_turns` the later user turns the am3_dialogue agent loop replays, "
            "`extra_info` the category, harmfulness and provenance. Written by `data_prep/intersafe_v.py`."
        ),
        configs=[CardConfig("default", {"train": OUTPUT_FILES[TRAIN], "validation": OUTPUT_FILES[VAL]}, default=True)],
        n_records=c.written.get(TRAIN, 0) + c.written.get(VAL, 0),
        task_categories=["image-text-to-text", "visual-question-answering"],
        distributions={f"category ({name})": dict(summary.categories.get(name, Counter())) for name in (TRAIN, VAL)},
        settings={
            "command": "data_prep/intersafe_v.py",
            "input": summary.input.name,
            "seed": summary.seed,
            "val_size": val_size,
            "val_ratio": val_ratio,
            "validation_planned": summary.n_val_planned,
            "allowed_categories": list(allowed_categories) if allowed_categories else "all",
            "image_policy": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(policy).items()},
            "records": {"read": c.read, "written": c.read - c.rejected, "rejected": c.rejected},
            "images": {"stored": c.images, "shrunk": c.resized},
        },
        files={REJECTS_FILE: "records that could not be converted, with the field and reason"},
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``data_prep/intersafe_v.py`` argument parser."""
    parser = argparse.ArgumentParser(
        description="Convert InterSafe-V dialogues (JSONL, parquet or a saved datasets folder) to verl RL parquet."
    )
    parser.add_argument("--input", required=True, help="dialogues: .jsonl, .json, .parquet or a datasets folder")
    split = parser.add_mutually_exclusive_group()
    split.add_argument("--val_size", type=int, default=None, help="number of validation dialogues")
    split.add_argument("--val_ratio", type=float, default=None, help=f"fraction of dialogues for validation (default {DEFAULT_VAL_RATIO})")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"split seed (default {DEFAULT_SEED})")
    parser.add_argument(
        "--categories",
        default=None,
        help="comma-separated list of the only harm categories accepted (benign always is); default: any "
        "non-empty label (the category distribution is printed)",
    )
    add_common_args(parser, "rl_train.parquet, rl_val.parquet, rejects.jsonl")
    return parser


def main(argv: list[str] | None = None) -> IntersafeSummary:
    """Command line entry; prints the summary paragraph."""
    args = build_parser().parse_args(argv)
    summary = convert_intersafe_v(
        args.input,
        args.output_dir,
        val_size=args.val_size,
        val_ratio=args.val_ratio,
        seed=args.seed,
        allowed_categories=parse_categories(args.categories),
        **common_options(args),
    )
    print(summary.paragraph())
    return summary
