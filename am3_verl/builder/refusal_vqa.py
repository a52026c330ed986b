"""The refusal VQA set (docs/method.md): 300 general harmful questions with analysed "I'm sorry" answers written
by a model, plus 100 health and 100 finance questions with professional-boundary refusals.

``python data_prep/build_refusal_vqa.py --general SPA_VL --health JAILBREAKV_CSV --finance MMFIN_TSV
--output_dir DIR --config FILE``

For each domain, from a local copy of its source:

1. a cheap first pass reads ids, questions and the filter fields (no images); records outside the
   filter (e.g. JailbreakV policies other than "Health Consultation") are skipped and counted; records
   with an empty question, several ``<image>`` placeholders or a question already taken (same text up
   to case and spacing) are rejected;
2. the candidates are shuffled with ``refusal_vqa.seed`` and taken in that order until ``counts[domain]``
   samples are complete; a candidate whose image is missing or does not decode, or (general) whose
   writer answer never passes the format check, is rejected and the next candidate takes its place;
3. general answers come from the ``refusal_vqa.writer`` role (image + question; the answer must begin
   "I'm sorry"); health and finance answers are professional-boundary refusals
   (:data:`am3_verl.builder.prompts.HEALTH_REFUSALS` / ``FINANCE_REFUSALS`` or the config's
   ``professional_refusals``), picked per sample by a hash of its id.

Outputs in ``--output_dir``: ``refusal_vqa.jsonl`` (our refusal VQA format: ``id``, ``image``,
``question``, ``answer``, ``domain``), ``images/``, ``rejects.jsonl`` (with the domain as ``input``),
``ledger.json``, ``README.md`` (the dataset card, :mod:`am3_verl.data.card`). Writer answers are checkpointed in ``.build_refusal/`` as they arrive; a rerun reuses
them. A writer call that fails for a transport reason (timeout, HTTP error) is not replaced: the run
ends with exit status 3 and a rerun retries it.

Source presets (column names of the public releases; override any of them in the config):

* ``spa_vl`` – SPA-VL parquet / ``datasets`` folder: ``image`` (an image struct), ``question``;
  ids are row positions;
* ``jailbreakv`` – JailbreakV-28K CSV: ``id``, ``image_path`` (relative to the CSV's folder),
  ``redteam_query``, filtered on ``policy`` = ``Health Consultation``;
* ``mme_finance`` – MME-Finance TSV: ``index``, ``image`` (base64 or a path), ``question``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import csv
import hashlib
import json
import random
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from pydantic import BaseModel, ConfigDict, Field
from tqdm import tqdm

from am3_verl.builder.answers import refusal_parser
from am3_verl.builder.calls import RoleCaller, role_callers, system_and_user
from am3_verl.builder.config import BuilderConfig, BuilderError, RefusalVqaConfig, SourceConfig, load_config
from am3_verl.builder.ledger import Ledger
from am3_verl.builder.prompts import Prompts, professional_refusals, quoted
from am3_verl.builder.state import CallRecord
from am3_verl.builder.store import CheckpointStore, atomic_write, image_extension
from am3_verl.data.card import CARD_FILE, CardConfig, DatasetCard, render_card
from am3_verl.data.errors import DataPrepError
from am3_verl.data.images import ImageCheckError, ImagePolicy, prepare_image, read_image_source
from am3_verl.data.readers import RecordSource, normalise_image_entry, open_source, parse_payload
from am3_verl.data.validate import REJECTS_FILE, Reject, RejectWriter
from am3_verl.dialogue import IMAGE_PLACEHOLDER, RefusalSample

DOMAINS: tuple[str, ...] = ("general", "health", "finance")
OUTPUT_FILE = "refusal_vqa.jsonl"
IMAGES_DIR = "images"
LEDGER_FILE = "ledger.json"
STORE_DIR = ".build_refusal"
EXIT_OK, EXIT_ERROR, EXIT_INCOMPLETE, EXIT_INTERRUPTED = 0, 1, 3, 130

PRESETS: dict[str, dict[str, Any]] = {
    "spa_vl": {"id_field": None, "image_field": "image", "question_field": "question", "filter": None},
    "jailbreakv": {
        "id_field": "id",
        "image_field": "image_path",
        "question_field": "redteam_query",
        "filter": {"policy": ["Health Consultation"]},
    },
    "mme_finance": {"id_field": "index", "image_field": "image", "question_field": "question", "filter": None},
    "custom": {"id_field": None, "image_field": None, "question_field": None, "filter": None},
}
"""Field names per preset (explicit :class:`SourceConfig` fields win)."""

_BASE64 = re.compile(r"^[A-Za-z0-9+/=\s]+$")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class ResolvedSource:
    """A source config with the preset applied."""

    domain: str
    path: Path
    id_field: str | None
    image_field: str
    question_field: str
    image_root: Path | None
    filter: dict[str, list[str]]


def resolve_source(domain: str, config: SourceConfig, path_override: str | None) -> ResolvedSource:
    """Apply the preset and the command-line path; :class:`BuilderError` when a field or the path is missing."""
    preset = PRESETS[config.preset]
    path = path_override or config.path
    if not path:
        raise BuilderError(f"refusal_vqa.sources.{domain}: no path; pass --{domain} or set sources.{domain}.path")
    image_field = config.image_field or preset["image_field"]
    question_field = config.question_field or preset["question_field"]
    if not image_field or not question_field:
        raise BuilderError(f"refusal_vqa.sources.{domain}: preset {config.preset!r} needs image_field and question_field")
    raw_filter = config.filter if config.filter is not None else preset["filter"]
    filters = {k: ([v] if isinstance(v, str) else list(v)) for k, v in (raw_filter or {}).items()}
    return ResolvedSource(
        domain,
        Path(path),
        config.id_field or preset["id_field"],
        image_field,
        question_field,
        Path(config.image_root) if config.image_root else None,
        filters,
    )


class _Table:
    """Records of a source: the data readers' formats plus CSV/TSV (one record per row)."""

    def __init__(self, source: ResolvedSource) -> None:
        self.path = source.path
        suffix = source.path.suffix.lower()
        self.delimiter = {".csv": ",", ".tsv": "\t"}.get(suffix)
        if self.delimiter is not None:
            if not source.path.is_file():
                raise BuilderError(f"{source.domain} source {source.path} does not exist")
            self.records: RecordSource | None = None
            self.base_dir = (source.image_root or source.path.parent).resolve()
        else:
            try:
                self.records = open_source(source.path, source.image_root)
            except DataPrepError as exc:
                raise BuilderError(f"{source.domain} source: {exc}") from None
            self.base_dir = self.records.base_dir

    def rows(self) -> Iterator[tuple[int, dict[str, Any] | None]]:
        """``(position, record)`` in file order; None for a record that is not an object."""
        if self.records is None:
            csv.field_size_limit(2**31 - 1)  # base64 image columns (MME-Finance) exceed the 128 KiB default
            try:
                with open(self.path, encoding="utf-8", newline="") as handle:
                    yield from enumerate(csv.DictReader(handle, delimiter=self.delimiter))
            except (OSError, UnicodeDecodeError, csv.Error) as exc:
                raise BuilderError(f"cannot read {self.path}: {exc}") from None
            return
        for position, payload in self.records.payloads():
            try:
                yield position, parse_payload(payload)
            except ValueError:
                yield position, None


@dataclass
class Candidate:
    """A record that passed the first pass."""

    position: int
    key: str
    """The source id (or position) as text."""
    question: str


def sample_id(domain: str, candidate: Candidate) -> str:
    """``rvqa-<domain>-<key>`` with unsafe characters replaced (and ``-p<position>`` when that changed the key)."""
    safe = _UNSAFE.sub("_", candidate.key).strip("._") or "x"
    suffix = f"-p{candidate.position}" if safe != candidate.key else ""
    return f"rvqa-{domain}-{safe}{suffix}"


def _normalised(question: str) -> str:
    return " ".join(question.casefold().split())


@dataclass
class DomainCounts:
    """Accounting of one domain: ``read = filtered + rejected + written + unused + pending``."""

    read: int = 0
    filtered: int = 0
    rejected: int = 0
    written: int = 0
    pending: int = 0
    """Writer calls that failed for a transport reason (retried by the next run)."""
    unused: int = 0
    """Valid candidates not needed."""


def first_pass(source: ResolvedSource, table: _Table, rejects: RejectWriter, counts: DomainCounts) -> list[Candidate]:
    """Read ids, questions and filter fields; reject bad records; return the candidates in file order."""
    candidates: list[Candidate] = []
    seen: dict[str, str] = {}
    for position, record in table.rows():
        counts.read += 1
        if record is None:
            rejects.write(Reject(position, None, "<record>", "not an object"))
            counts.rejected += 1
            continue
        if any(str(record.get(name)) not in values for name, values in source.filter.items()):
            counts.filtered += 1
            continue
        raw_id = record.get(source.id_field) if source.id_field else position
        key = str(raw_id) if raw_id is not None and str(raw_id).strip() else str(position)
        question = record.get(source.question_field)
        if not isinstance(question, str) or not question.strip():
            rejects.write(Reject(position, key, source.question_field, "question is missing or empty"))
            counts.rejected += 1
            continue
        question = question.strip()
        if question.count(IMAGE_PLACEHOLDER) > 1:
            rejects.write(
                Reject(
                    position,
                    key,
                    source.question_field,
                    f"{question.count(IMAGE_PLACEHOLDER)} {IMAGE_PLACEHOLDER} placeholders but one image",
                )
            )
            counts.rejected += 1
            continue
        norm = _normalised(question)
        if norm in seen:
            rejects.write(Reject(position, key, source.question_field, f"duplicate question: same text as record {seen[norm]}"))
            counts.rejected += 1
            continue
        seen[norm] = key
        candidates.append(Candidate(position, key, question))
    keys = [c.key for c in candidates]
    if len(set(keys)) != len(keys):
        duplicates = sorted({k for k in keys if keys.count(k) > 1})[:5]
        raise BuilderError(f"{source.domain} source {source.path}: ids are not unique in {source.id_field!r} (e.g. {duplicates})")
    return candidates


def _image_bytes(value: Any, base_dir: Path) -> bytes:
    value = normalise_image_entry(value)
    if isinstance(value, str) and not value.startswith("data:"):
        path = Path(value.removeprefix("file://"))
        resolved = path if path.is_absolute() else base_dir / path
        if not resolved.is_file() and len(value) > 64 and _BASE64.match(value):
            try:
                return base64.b64decode(value, validate=False)
            except (binascii.Error, ValueError) as exc:
                raise ImageCheckError(f"image is neither a file nor valid base64: {exc}") from None
    if value is None:
        raise ImageCheckError("image is missing")
    return read_image_source(value, base_dir)


def fetch_images(source: ResolvedSource, table: _Table, wanted: set[int]) -> dict[int, bytes | ImageCheckError]:
    """The image bytes (or the reason they are unusable) of the records at ``wanted`` positions."""
    found: dict[int, bytes | ImageCheckError] = {}
    for position, record in table.rows():
        if position not in wanted:
            continue
        try:
            data = _image_bytes((record or {}).get(source.image_field), table.base_dir)
            prepare_image(data, ImagePolicy())
            image_extension(data)
            found[position] = data
        except ValueError as exc:  # ImageCheckError, unknown formats
            found[position] = exc if isinstance(exc, ImageCheckError) else ImageCheckError(str(exc))
        if len(found) == len(wanted):
            break
    for position in wanted - found.keys():
        found[position] = ImageCheckError("record not found on the second read (the file changed?)")
    return found


class WriterState(BaseModel):
    """The checkpoint of one general sample's writer call."""

    model_config = ConfigDict(extra="forbid")
    answer: str | None = None
    rejected: str | None = None
    """Why the writer's answer never passed the format check (final)."""
    calls: list[CallRecord] = Field(default_factory=list)


@dataclass
class RefusalSummary:
    """The outcome of :func:`build_refusal_vqa`."""

    output_dir: Path
    counts: dict[str, DomainCounts]
    wanted: dict[str, int]
    ledger_all: Ledger
    ledger_run: Ledger
    seconds: float
    short: dict[str, int] = field(default_factory=dict)
    """Domains that ended with fewer samples than wanted (and how many)."""

    @property
    def exit_code(self) -> int:
        """0, or 3 when a domain is short or writer calls are pending."""
        return EXIT_INCOMPLETE if self.short or any(c.pending for c in self.counts.values()) else EXIT_OK

    def paragraph(self) -> str:
        """The one-paragraph summary printed at the end of a run."""
        parts = []
        for domain, c in self.counts.items():
            parts.append(
                f"{domain}: read {c.read} = {c.written} written + {c.rejected} rejected + {c.filtered} outside the "
                f"filter + {c.unused} not needed + {c.pending} pending ({self.wanted[domain]} wanted)"
            )
        text = f"Refusal VQA: {'; '.join(parts)}. "
        total = sum(c.written for c in self.counts.values())
        text += f"Wrote {total} samples to {self.output_dir / OUTPUT_FILE} with their images; rejects in {self.output_dir / REJECTS_FILE}. "
        if self.short:
            text += "Short of the wanted count: " + ", ".join(f"{d} by {n}" for d, n in self.short.items()) + ". "
        pending = sum(c.pending for c in self.counts.values())
        if pending:
            text += f"{pending} writer call(s) failed after retries; rerun the same command to retry them. "
        text += (
            f"Writer cost this run: {self.ledger_run.line()}; over all runs: {self.ledger_all.line()} "
            f"({self.output_dir / LEDGER_FILE}). {self.seconds:.1f} s."
        )
        return text


async def _write_answers(
    caller: RoleCaller,
    prompts: Prompts,
    store: CheckpointStore[WriterState],
    batch: list[tuple[str, Candidate, bytes]],
    rvqa: RefusalVqaConfig,
    run_ledger: Ledger,
    bar: tqdm,
) -> None:
    semaphore = asyncio.Semaphore(rvqa.concurrency)
    parse = refusal_parser(rvqa.max_answer_chars)

    async def one(sid: str, candidate: Candidate, image: bytes) -> None:
        state = store.load(sid) or WriterState()
        if state.answer is not None or state.rejected is not None:
            return
        text = prompts.render("refusal_writer", question=quoted("QUESTION", candidate.question))
        async with semaphore:
            outcome = await caller.call("refusal_vqa", system_and_user(prompts.text("refusal_writer_system"), text, [image]), parse)
        state.calls.append(outcome.record)
        run_ledger.add(outcome.record)
        if outcome.ok:
            state.answer = outcome.value
        elif outcome.record.error and outcome.record.error.startswith("parse:"):
            state.rejected = f"the writer's answer never passed the format check: {outcome.record.error}"
        await store.save_async(sid, state)
        bar.update(1)

    await asyncio.gather(*(one(*entry) for entry in batch))


async def _build_domain(
    domain: str,
    source: ResolvedSource,
    wanted: int,
    rvqa: RefusalVqaConfig,
    config: BuilderConfig,
    prompts: Prompts,
    caller: RoleCaller | None,
    store: CheckpointStore[WriterState],
    rejects: RejectWriter,
    run_ledger: Ledger,
    progress: bool,
) -> tuple[list[dict], dict[str, bytes], DomainCounts]:
    counts = DomainCounts()
    table = _Table(source)
    rejects.input_name = domain
    candidates = first_pass(source, table, rejects, counts)
    random.Random(f"{rvqa.seed}:{domain}").shuffle(candidates)
    answers = professional_refusals(domain, config.professional_refusals) if domain != "general" else ()
    chosen: list[tuple[Candidate, str, bytes]] = []  # (candidate, sample id, image) in selection order
    next_index = 0
    bar = tqdm(total=wanted, desc=f"refusal_vqa {domain}", unit="sample", disable=not progress, file=sys.stderr, dynamic_ncols=True)
    try:
        while len(chosen) + counts.pending < wanted and next_index < len(candidates):
            window = candidates[next_index : next_index + (wanted - len(chosen) - counts.pending)]
            next_index += len(window)
            images = fetch_images(source, table, {c.position for c in window})
            ready = []
            for candidate in window:
                image = images[candidate.position]
                if isinstance(image, ImageCheckError):
                    rejects.write(Reject(candidate.position, candidate.key, source.image_field, str(image)))
                    counts.rejected += 1
                    continue
                ready.append((sample_id(domain, candidate), candidate, image))
            if domain == "general":
                assert caller is not None
                await _write_answers(caller, prompts, store, ready, rvqa, run_ledger, bar)
                for sid, candidate, image in ready:
                    state = store.load(sid)
                    assert state is not None
                    if state.answer is not None:
                        chosen.append((candidate, sid, image))
                    elif state.rejected is not None:
                        rejects.write(Reject(candidate.position, candidate.key, "answer", state.rejected))
                        counts.rejected += 1
                    else:
                        counts.pending += 1
            else:
                for sid, candidate, image in ready:
                    chosen.append((candidate, sid, image))
                    bar.update(1)
    finally:
        bar.close()
    counts.unused = len(candidates) - next_index
    records, images_out = [], {}
    for candidate, sid, image in chosen:
        if domain == "general":
            state = store.load(sid)
            assert state is not None and state.answer is not None
            answer = state.answer
        else:
            answer = answers[int(hashlib.sha256(sid.encode("utf-8")).hexdigest(), 16) % len(answers)]
        name = f"{IMAGES_DIR}/{sid}.{image_extension(image)}"
        record = {"id": sid, "image": name, "question": candidate.question, "answer": answer, "domain": domain}
        RefusalSample.model_validate(record)
        records.append(record)
        images_out[name] = image
    counts.written = len(records)
    if counts.read != counts.filtered + counts.rejected + counts.written + counts.unused + counts.pending:
        raise RuntimeError(f"{domain}: count check failed: {counts}")
    return records, images_out, counts


async def _build_async(
    paths: dict[str, str | None],
    output_dir: Path,
    config: BuilderConfig,
    progress: bool,
) -> RefusalSummary:
    started = time.perf_counter()
    rvqa = config.require_refusal_vqa()
    wanted = {d: rvqa.counts.get(d, 0) for d in DOMAINS}
    active = [d for d in DOMAINS if wanted[d] > 0]
    sources = {d: resolve_source(d, rvqa.sources.get(d, SourceConfig()), paths.get(d)) for d in active}
    caller = role_callers(config, {"writer": rvqa.writer})["writer"] if "general" in active else None
    prompts = Prompts(config.prompts)
    output_dir.mkdir(parents=True, exist_ok=True)
    with CheckpointStore(output_dir / STORE_DIR, WriterState) as store:
        return await _build_with_store(output_dir, config, rvqa, wanted, active, sources, caller, prompts, progress, store, started)


async def _build_with_store(
    output_dir: Path,
    config: BuilderConfig,
    rvqa: RefusalVqaConfig,
    wanted: dict[str, int],
    active: list[str],
    sources: dict[str, ResolvedSource],
    caller: RoleCaller | None,
    prompts: Prompts,
    progress: bool,
    store: CheckpointStore[WriterState],
    started: float,
) -> RefusalSummary:
    rejects = RejectWriter(output_dir / REJECTS_FILE)
    run_ledger = Ledger()
    all_records: list[dict] = []
    all_images: dict[str, bytes] = {}
    counts: dict[str, DomainCounts] = {}
    try:
        for domain in active:
            records, images, counts[domain] = await _build_domain(
                domain, sources[domain], wanted[domain], rvqa, config, prompts, caller, store, rejects, run_ledger, progress
            )
            all_records += records
            all_images.update(images)
    finally:
        rejects.close()
    new_images = output_dir / f".{IMAGES_DIR}.new"
    if new_images.exists():
        shutil.rmtree(new_images)
    new_images.mkdir()
    for name, data in all_images.items():
        (new_images / Path(name).name).write_bytes(data)
    images_dir = output_dir / IMAGES_DIR
    if images_dir.exists():
        shutil.rmtree(images_dir)
    new_images.rename(images_dir)
    atomic_write(output_dir / OUTPUT_FILE, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in all_records).encode("utf-8"))
    atomic_write(output_dir / CARD_FILE, render_card(dataset_card(config, rvqa, sources, wanted, counts, all_records)).encode("utf-8"))
    all_ledger = Ledger().add_all(record for state in store.iter_records() for record in state.calls)
    all_ledger.write(output_dir / LEDGER_FILE, {"this_run": run_ledger.as_dict()["total"]})
    short = {d: wanted[d] - counts[d].written for d in active if counts[d].written < wanted[d]}
    return RefusalSummary(output_dir, counts, wanted, all_ledger, run_ledger, time.perf_counter() - started, short)


def dataset_card(
    config: BuilderConfig,
    rvqa: RefusalVqaConfig,
    sources: dict[str, ResolvedSource],
    wanted: dict[str, int],
    counts: dict[str, DomainCounts],
    records: list[dict],
) -> DatasetCard:
    """The dataset card of the refusal VQA folder: domains, sources and the writer's model (no URLs, no keys)."""
    domains: dict[str, int] = {}
    for record in records:
        domains[record["domain"]] = domains.get(record["domain"], 0) + 1
    return DatasetCard(
        pretty_name="AM3 refusal VQA (built with am3-verl)",
        summary=(
            "Refusal-template learning samples: general harmful questions about an image answered with an "
            '"I\'m sorry" refusal that analyses why (written by a model), and health and finance questions '
            "answered with a professional-boundary refusal. One sample per line (`id`, `image`, `question`, "
            "`answer`, `domain`); convert it with `data_prep/cold_start.py`. Built by "
            "`data_prep/build_refusal_vqa.py`."
        ),
        configs=[CardConfig("default", {"train": OUTPUT_FILE}, default=True)],
        n_records=len(records),
        task_categories=["image-text-to-text", "visual-question-answering"],
        distributions={"domain": domains},
        settings={
            "command": "data_prep/build_refusal_vqa.py",
            "writer_model": config.endpoints[rvqa.writer.endpoint].model if "general" in sources else None,
            "seed": rvqa.seed,
            "wanted": wanted,
            "sources": {
                d: {"preset": rvqa.sources.get(d, SourceConfig()).preset, "file": sources[d].path.name, "filter": sources[d].filter}
                for d in sources
            },
            "counts": {
                d: {
                    "read": c.read,
                    "written": c.written,
                    "rejected": c.rejected,
                    "filtered": c.filtered,
                    "unused": c.unused,
                    "pending": c.pending,
                }
                for d, c in counts.items()
            },
        },
        files={
            IMAGES_DIR + "/": "the pictures the samples name",
            REJECTS_FILE: "records that could not be used, with the reason",
            LEDGER_FILE: "writer calls, tokens and failures",
        },
        tags=["safety", "multimodal", "refusal", "am3-verl"],
    )


def build_refusal_vqa(
    output_dir: str | Path,
    config: BuilderConfig,
    *,
    general: str | None = None,
    health: str | None = None,
    finance: str | None = None,
    progress: bool = True,
) -> RefusalSummary:
    """Build the refusal VQA set (see the module docstring); paths override the config's source paths."""
    return asyncio.run(_build_async({"general": general, "health": health, "finance": finance}, Path(output_dir), config, progress))


def build_parser() -> argparse.ArgumentParser:
    """The ``data_prep/build_refusal_vqa.py`` argument parser."""
    parser = argparse.ArgumentParser(
        description="Build the refusal VQA set (general harmful + health + finance) from local copies of its sources."
    )
    parser.add_argument("--config", required=True, help="builder YAML config with a refusal_vqa section and the writer's endpoint")
    parser.add_argument("--output_dir", required=True, help="folder for refusal_vqa.jsonl, images/, rejects.jsonl, ledger.json")
    parser.add_argument("--general", default=None, help="general harmful questions (SPA-VL copy); overrides sources.general.path")
    parser.add_argument("--health", default=None, help="health questions (JailbreakV-28K csv); overrides sources.health.path")
    parser.add_argument("--finance", default=None, help="finance questions (MME-Finance tsv); overrides sources.finance.path")
    parser.add_argument("--no_progress", action="store_true", help="no progress bars")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Command line entry; prints the summary paragraph and returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        summary = build_refusal_vqa(
            args.output_dir,
            load_config(args.config),
            general=args.general,
            health=args.health,
            finance=args.finance,
            progress=not args.no_progress,
        )
    except BuilderError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except (KeyboardInterrupt, asyncio.CancelledError):
        print(f"interrupted: writer answers are checkpointed in {Path(args.output_dir) / STORE_DIR}; rerun to continue", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(summary.paragraph())
    return summary.exit_code
