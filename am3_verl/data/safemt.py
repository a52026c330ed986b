"""SafeMT (public JSON) -> an evaluation parquet that keeps the pre-filled history, round count and scenario.

SafeMT items are ``{id, scenario, image_path, dialogue: [{role, content}], question}``: the dialogue
holds the earlier rounds with the assistant turns pre-filled and ends on the user turn to answer; only
that final reply is generated. If a dialogue ends on an assistant turn instead, ``question`` is the user
turn to answer and is appended. Other keys of an item are kept as JSON in ``meta``.

One row per item in ``safemt.parquet`` (RLHFDataset-compatible, so verl's validation can run it):

* ``prompt`` – the whole dialogue, ending on the user turn to answer; the first user turn carries one
  ``<image>`` placeholder per image (prepended when the item has none)
* ``images`` – ``[{"bytes": ...}]``; ``history`` – ``prompt`` without its last message
* ``question`` – the text of the final user turn; ``source_question`` – the item's ``question`` field
* ``scenario``, ``num_rounds`` (user turns in ``prompt``), ``id``, ``data_source`` = ``"safemt"``,
  ``agent_name`` = ``"single_turn_agent"``, ``reward_model`` = ``{"style": "judge", "ground_truth": scenario}``,
  ``extra_info`` = ``{"index", "id", "scenario", "num_rounds"}``, ``meta``
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, Union

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

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
from am3_verl.data.pipeline import IMAGE_TYPE, MESSAGES_TYPE, ChunkResult, RowBuilder, RunCounts
from am3_verl.data.readers import RecordSource, normalise_image_entry, open_source
from am3_verl.data.validate import REJECTS_FILE, Reject, read_record, reject_from_validation_error, record_id_of
from am3_verl.dialogue import IMAGE_PLACEHOLDER, ImageBytes

DATA_SOURCE = "safemt"
EVAL_AGENT_NAME = "single_turn_agent"
OUTPUT_FILE = "safemt.parquet"
EVAL = "eval"

SAFEMT_SCHEMA = pa.schema(
    [
        pa.field("prompt", MESSAGES_TYPE),
        pa.field("images", IMAGE_TYPE),
        pa.field("history", MESSAGES_TYPE),
        pa.field("question", pa.string()),
        pa.field("source_question", pa.string()),
        pa.field("scenario", pa.string()),
        pa.field("num_rounds", pa.int64()),
        pa.field("id", pa.string()),
        pa.field("data_source", pa.string()),
        pa.field("agent_name", pa.string()),
        pa.field("reward_model", pa.struct([pa.field("style", pa.string()), pa.field("ground_truth", pa.string())])),
        pa.field(
            "extra_info",
            pa.struct(
                [
                    pa.field("index", pa.int64()),
                    pa.field("id", pa.string()),
                    pa.field("scenario", pa.string()),
                    pa.field("num_rounds", pa.int64()),
                ]
            ),
        ),
        pa.field("meta", pa.string()),
    ]
)
"""Columns of ``safemt.parquet`` (fixed order)."""
OUTPUTS = {EVAL: Output(OUTPUT_FILE, SAFEMT_SCHEMA)}


class SafeMTMessage(BaseModel):
    """One message of a SafeMT dialogue."""

    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "user", "assistant"]
    content: str

    @field_validator("content")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("content is empty")
        return value


class SafeMTItem(BaseModel):
    """One SafeMT item in its public JSON form (unknown keys are kept, not rejected)."""

    model_config = ConfigDict(extra="allow")
    id: Union[str, int]
    scenario: str
    image_path: Union[str, ImageBytes, list[Union[str, ImageBytes]]]
    dialogue: list[SafeMTMessage] = Field(min_length=1)
    question: str

    @field_validator("id")
    @classmethod
    def _id(cls, value: str | int) -> str:
        text = str(value)
        if not text.strip():
            raise ValueError("id is empty")
        return text

    @field_validator("scenario", "question")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("empty")
        return value

    @field_validator("dialogue")
    @classmethod
    def _turn_order(cls, dialogue: list[SafeMTMessage]) -> list[SafeMTMessage]:
        roles = [m.role for m in dialogue]
        offset = 1 if roles[0] == "system" else 0
        if len(roles) == offset:
            raise ValueError("dialogue has no user turn")
        for i, role in enumerate(roles[offset:]):
            expected = "user" if i % 2 == 0 else "assistant"
            if role != expected:
                raise ValueError(f"message {i + offset} is {role!r}; expected {expected!r} (turns alternate user/assistant)")
        return dialogue

    @property
    def image_entries(self) -> list[Any]:
        """The image entries as a list."""
        return list(self.image_path) if isinstance(self.image_path, list) else [self.image_path]


@dataclass(frozen=True)
class SafeMTJob:
    """What a worker needs (picklable)."""

    base_dir: Path
    policy: ImagePolicy


def _prompt(item: SafeMTItem) -> list[dict[str, str]]:
    messages = [{"role": m.role, "content": m.content} for m in item.dialogue]
    if messages[-1]["role"] == "assistant":
        messages.append({"role": "user", "content": item.question})
    return messages


def _convert_one(position: int, payload: Any, assignment: str, job: SafeMTJob, out: RowBuilder) -> None:
    record = read_record(position, payload)
    if isinstance(record, Reject):
        out.reject(record)
        return
    record_id = record_id_of(record)
    image = record.get("image_path")
    if image is not None:
        record = {
            **record,
            "image_path": [normalise_image_entry(e) for e in image] if isinstance(image, list) else normalise_image_entry(image),
        }
    try:
        item = SafeMTItem.model_validate(record)
    except ValidationError as exc:
        out.reject(reject_from_validation_error(position, record_id, exc))
        return
    first = duplicate_of(assignment)
    if first is not None:
        out.reject(Reject(position, item.id, "id", f"duplicate id: already used by record {first}"))
        return
    prompt = _prompt(item)
    entries = item.image_entries
    if not entries:
        out.reject(Reject(position, item.id, "image_path", "no image"))
        return
    placeholders = sum(m["content"].count(IMAGE_PLACEHOLDER) for m in prompt)
    if placeholders == 0:
        first_user = next(m for m in prompt if m["role"] == "user")
        first_user["content"] = IMAGE_PLACEHOLDER * len(entries) + "\n" + first_user["content"]
    elif placeholders != len(entries):
        out.reject(Reject(position, item.id, "dialogue", f"{placeholders} {IMAGE_PLACEHOLDER} placeholder(s) but {len(entries)} image(s)"))
        return
    images = []
    for k, entry in enumerate(entries):
        try:
            data, resized = prepare_image(read_image_source(entry, job.base_dir, job.policy), job.policy)
        except ImageCheckError as exc:
            field = "image_path" if not isinstance(item.image_path, list) else f"image_path[{k}]"
            out.reject(Reject(position, item.id, field, str(exc)))
            return
        images.append({"bytes": data})
        out.resized += resized
    out.images += len(images)
    num_rounds = sum(m["role"] == "user" for m in prompt)
    out.add(
        position,
        EVAL,
        {
            "prompt": prompt,
            "images": images,
            "history": prompt[:-1],
            "question": prompt[-1]["content"],
            "source_question": item.question,
            "scenario": item.scenario,
            "num_rounds": num_rounds,
            "id": item.id,
            "data_source": DATA_SOURCE,
            "agent_name": EVAL_AGENT_NAME,
            "reward_model": {"style": "judge", "ground_truth": item.scenario},
            "extra_info": {"index": position, "id": item.id, "scenario": item.scenario, "num_rounds": num_rounds},
            "meta": json.dumps(item.model_extra or {}, ensure_ascii=False, sort_keys=True, default=str),
        },
    )


def _plan(source: RecordSource) -> tuple[dict[int, str], int]:
    assignment: dict[int, str] = {}
    first_seen: dict[str, int] = {}
    n_records = 0
    for position, key in source.keys(("id",)):
        n_records += 1
        raw = None if key is None else key.get("id")
        if isinstance(raw, bool) or not isinstance(raw, (str, int)):
            assignment[position] = EVAL  # validation rejects it
            continue
        record_id = str(raw)
        if record_id in first_seen:
            assignment[position] = duplicate_assignment(first_seen[record_id])
        else:
            first_seen[record_id] = position
            assignment[position] = EVAL
    if n_records == 0:
        raise DataPrepError(f"{source.path} holds no records")
    return assignment, n_records


@dataclass
class SafeMTSummary:
    """The outcome of :func:`convert_safemt`."""

    input: Path
    output_dir: Path
    counts: RunCounts
    rounds: dict[int, int]
    scenarios: dict[str, int]
    seconds: float
    workers: int

    def paragraph(self) -> str:
        """The one-paragraph summary printed at the end of a run."""
        c = self.counts
        return (
            f"Converted SafeMT {self.input}: read {c.read} items = written {c.written.get(EVAL, 0)} + rejected "
            f"{c.rejected}, to {self.output_dir / OUTPUT_FILE} (rejects in {self.output_dir / REJECTS_FILE}). "
            f"Rounds: " + ", ".join(f"{k}: {v}" for k, v in sorted(self.rounds.items())) + "; "
            f"{len(self.scenarios)} scenarios: "
            + ", ".join(f"{k} {v}" for k, v in sorted(self.scenarios.items()))
            + f". {c.images} images stored ({c.resized} shrunk); {self.seconds:.1f} s on {self.workers} worker(s)."
        )


def convert_safemt(
    input_path: str | Path,
    output_dir: str | Path,
    *,
    policy: ImagePolicy = ImagePolicy(),
    image_root: str | Path | None = None,
    workers: int | None = None,
    chunk_size: int = 32,
    row_group_rows: int = 256,
    progress: bool = True,
) -> SafeMTSummary:
    """Write ``safemt.parquet`` and ``rejects.jsonl``; raises :class:`DataPrepError` on unreadable or empty input."""
    source = open_source(input_path, image_root)
    with Conversion(output_dir, workers=workers, chunk_size=chunk_size, row_group_rows=row_group_rows, progress=progress) as run:
        assignment, n_records = _plan(source)
        rounds: dict[int, int] = {}
        scenarios: dict[str, int] = {}

        def tally(result: ChunkResult) -> None:
            batch = result.batches.get(EVAL)
            if batch is not None:
                for n in batch.column("num_rounds").to_pylist():
                    rounds[n] = rounds.get(n, 0) + 1
                for name in batch.column("scenario").to_pylist():
                    scenarios[name] = scenarios.get(name, 0) + 1

        run.open(OUTPUTS)
        counts = run.convert(
            _convert_one,
            SafeMTJob(source.base_dir, policy),
            planned_tasks(source, assignment),
            total=n_records,
            desc="safemt",
            on_chunk=tally,
        )
        if counts.written.get(EVAL, 0) == 0:
            raise run.fail(f"no SafeMT item was written ({counts.rejected} of {counts.read} rejected; see {run.out_dir / REJECTS_FILE})")
        summary = SafeMTSummary(Path(input_path), run.out_dir, counts, rounds, scenarios, run.seconds, run.workers)
        run.write_text(CARD_FILE, render_card(_card(summary, policy)))
        run.commit()
        return summary


def _card(summary: "SafeMTSummary", policy: ImagePolicy) -> DatasetCard:
    """The dataset card of a converted SafeMT folder."""
    c = summary.counts
    return DatasetCard(
        pretty_name="SafeMT (evaluation parquet, am3-verl)",
        summary=(
            "SafeMT's multi-turn multimodal safety benchmark items in verl's RL parquet form, one row per item: "
            "`prompt` is the whole dialogue with the assistant turns pre-filled, ending on the user turn to "
            "answer; `scenario` and `num_rounds` say what and how long. For evaluation (`python -m am3_verl.eval`). "
            "Written by `data_prep/safemt.py` from SafeMT's public JSON."
        ),
        configs=[CardConfig("default", {"test": OUTPUT_FILE}, default=True)],
        n_records=c.written.get(EVAL, 0),
        task_categories=["image-text-to-text", "visual-question-answering"],
        distributions={"scenario": dict(summary.scenarios), "rounds (user turns)": {str(k): v for k, v in sorted(summary.rounds.items())}},
        settings={
            "command": "data_prep/safemt.py",
            "input": summary.input.name,
            "source": "SafeMT (https://github.com/Happy-Corpse/SafeMT)",
            "image_policy": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(policy).items()},
            "records": {"read": c.read, "written": c.written.get(EVAL, 0), "rejected": c.rejected},
            "images": {"stored": c.images, "shrunk": c.resized},
        },
        files={REJECTS_FILE: "records that could not be converted, with the field and reason"},
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``data_prep/safemt.py`` argument parser."""
    parser = argparse.ArgumentParser(description="Convert SafeMT (public JSON) to an evaluation parquet.")
    parser.add_argument("--input", required=True, help="SafeMT items: .json (array), .jsonl, .parquet or a datasets folder")
    add_common_args(parser, "safemt.parquet and rejects.jsonl")
    return parser


def main(argv: list[str] | None = None) -> SafeMTSummary:
    """Command line entry; prints the summary paragraph."""
    args = build_parser().parse_args(argv)
    summary = convert_safemt(args.input, args.output_dir, **common_options(args))
    print(summary.paragraph())
    return summary
