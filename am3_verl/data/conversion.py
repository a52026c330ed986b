"""The driver every converter runs on (InterSafe-V, SafeMT, cold start): what is the same for all of them.

A converter supplies only what is its own: the output files with their schemas, a first pass that
assigns every input position an output name (or ``duplicate:<where>`` for a repeated id, see
:func:`duplicate_assignment`), and ``convert_one(position, payload, assignment, settings, out)``, which
validates one record and adds its row(s) or a reject to ``out`` (a :class:`RowBuilder`).
:class:`Conversion` does the rest: the output-folder check and lock (one conversion per folder at a time),
the worker pool, staged files (renamed only when the run completes; on an empty result only
``rejects.jsonl`` is kept, saying why; a ``README.md`` the data commands did not write is never
replaced), one parquet sink per output file, the spool folder, chunking, the progress bar,
``read == written + rejected``, and a full disk reported as one :class:`DataPrepError`.
:func:`add_common_args` / :func:`common_options` are the flags every converter command shares.
"""

from __future__ import annotations

import argparse
import errno
import os
import time
from contextlib import ExitStack, closing
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import pyarrow as pa

from am3_verl.data.card import CARD_FILE, CardConflict, check_replaceable
from am3_verl.data.cli import add_image_args, add_run_args, policy_from_args, progress_bar
from am3_verl.data.errors import DataPrepError
from am3_verl.data.pipeline import (
    ChunkResult,
    ParquetSink,
    RowBuilder,
    RunCounts,
    StagedOutputs,
    chunked,
    default_workers,
    drive,
    ordered_map,
    prepare_output_dir,
    spool_dir,
    warm_up_workers,
)
from am3_verl.data.readers import RecordSource
from am3_verl.data.validate import REJECTS_FILE, RejectWriter
from am3_verl.folder_lock import FolderBusy, FolderLock

LOCK_FILE = ".am3-data.lock"
"""The data commands' lock file in an output folder (see :mod:`am3_verl.folder_lock`)."""
_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})

DUPLICATE = "duplicate:"
"""Assignment prefix of a record whose id an earlier record already used; the rest names that record."""

ConvertOne = Callable[[int, Any, str, Any, RowBuilder], None]
"""``convert_one(position, payload, assignment, settings, out)``: one record to rows or a reject."""


def duplicate_assignment(first: str | int) -> str:
    """The assignment of a record whose id record ``first`` already used."""
    return f"{DUPLICATE}{first}"


def duplicate_of(assignment: str) -> str | None:
    """Which record first used the id, when ``assignment`` marks a duplicate; else None."""
    return assignment.removeprefix(DUPLICATE) if assignment.startswith(DUPLICATE) else None


@dataclass(frozen=True)
class Output:
    """One output of a converter: its file and its schema (outputs may share a file of the same schema)."""

    filename: str
    schema: pa.Schema


@dataclass(frozen=True)
class ChunkJob:
    """What a worker needs for a chunk (picklable): the converter's function and settings, the schemas."""

    convert_one: ConvertOne
    settings: Any
    schemas: dict[str, pa.Schema]
    spool_dir: str | None


def convert_chunk(job: ChunkJob, tasks: list[tuple[int, Any, str]]) -> ChunkResult:
    """Worker entry: convert one chunk of ``(position, payload, assignment)`` tasks."""
    out = RowBuilder(job.schemas, job.spool_dir)
    for position, payload, assignment in tasks:
        job.convert_one(position, payload, assignment, job.settings, out)
    return out.result()


def planned_tasks(source: RecordSource, assignment: Mapping[int, str]) -> Iterator[tuple[int, Any, str]]:
    """``(position, payload, assignment)`` for every input record (``unplanned`` where the first pass gave none)."""
    for position, payload in source.payloads():
        yield position, payload, assignment.get(position, "unplanned")


class Conversion:
    """One converter run: checks and locks the output folder and starts the workers on creation; :meth:`open`
    stages the files. Use it as a context manager: leaving it without :meth:`commit` or :meth:`fail` discards
    every staged file, so a failed or interrupted run never leaves a complete-looking output; leaving it
    releases the folder's lock. A full disk (``ENOSPC``, ``EDQUOT``) anywhere in the run leaves it as a
    :class:`DataPrepError` with one line saying so."""

    def __init__(
        self,
        output_dir: str | Path,
        *,
        workers: int | None = None,
        chunk_size: int = 32,
        row_group_rows: int = 256,
        progress: bool = True,
    ) -> None:
        self.started = time.perf_counter()
        self.out_dir = prepare_output_dir(output_dir)
        self._check_card()  # before the lock, so that a refused folder gets no lock file either
        self._lock = FolderLock(
            self.out_dir,
            LOCK_FILE,
            holder="am3_verl data preparation",
            why="two conversions into one folder would mix one run's data files with the other's dataset card.",
        )
        try:
            self._lock.acquire()
        except FolderBusy as exc:
            raise DataPrepError(str(exc)) from None
        except OSError as exc:  # the lock file cannot be created (a full disk, a read-only folder)
            raise DataPrepError(f"--output_dir {self.out_dir} cannot be locked ({self._lock.path}): {exc.strerror or exc}") from None
        try:
            self.workers = workers or default_workers()
            self.chunk_size = chunk_size
            self.row_group_rows = row_group_rows
            self.progress = progress
            warm_up_workers(self.workers)
        except BaseException:
            self._lock.release()
            raise
        self.sinks: dict[str, ParquetSink] = {}
        self.rejects: RejectWriter | None = None
        self._staged = StagedOutputs(self.out_dir)
        self._resources = ExitStack()
        self._spool: str | None = None

    def __enter__(self) -> "Conversion":
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        try:
            self.close()
        except BaseException as close_error:
            if exc is None:  # otherwise the run's own error is the one to report
                disk_full = self._disk_full(close_error)
                if disk_full is None:
                    raise
                raise disk_full from close_error
        finally:
            self._staged.discard()
            self._lock.release()
        if exc is not None:
            disk_full = self._disk_full(exc)
            if disk_full is not None:
                raise disk_full from exc

    def _disk_full(self, exc: BaseException) -> DataPrepError | None:
        """The one-line error for a full disk or quota, or None for any other exception."""
        if isinstance(exc, OSError) and exc.errno in _DISK_FULL:
            return DataPrepError(
                f"no space left on device writing to {self.out_dir} ({exc.strerror or exc}): the run stopped, its "
                "partial files were removed and earlier outputs are unchanged; free some space or pass another --output_dir"
            )
        return None

    def _check_card(self) -> None:
        """Raise :class:`DataPrepError` if the folder's ``README.md`` is not a card the data commands wrote."""
        try:
            check_replaceable(os.path.abspath(self.out_dir / CARD_FILE))
        except CardConflict as exc:
            raise DataPrepError(str(exc)) from None

    @property
    def seconds(self) -> float:
        """Wall time since the run started."""
        return time.perf_counter() - self.started

    def open(self, outputs: Mapping[str, Output]) -> RejectWriter:
        """Stage one parquet file per distinct output file and ``rejects.jsonl``; returns the rejects writer."""
        by_file: dict[str, ParquetSink] = {}
        for name, output in outputs.items():
            if output.filename not in by_file:
                sink = ParquetSink(self._staged.stage(output.filename), output.schema, self.row_group_rows)
                by_file[output.filename] = self._resources.enter_context(closing(sink))
            self.sinks[name] = by_file[output.filename]
        self.rejects = RejectWriter(self._staged.stage(REJECTS_FILE), staged=True)
        self._resources.callback(self.rejects.close)
        self._spool = self._resources.enter_context(spool_dir(self.out_dir, self.workers))
        return self.rejects

    def results(self, convert_one: ConvertOne, settings: Any, tasks: Iterable[tuple[int, Any, str]]) -> Iterator[ChunkResult]:
        """The workers' results for ``tasks``, chunk by chunk in input order."""
        job = ChunkJob(convert_one, settings, {name: sink.schema for name, sink in self.sinks.items()}, self._spool)
        return ordered_map(partial(convert_chunk, job), chunked(tasks, self.chunk_size), self.workers)

    def convert(
        self,
        convert_one: ConvertOne,
        settings: Any,
        tasks: Iterable[tuple[int, Any, str]],
        *,
        total: int,
        desc: str,
        on_outcome: Callable[[int, str], None] | None = None,
        on_chunk: Callable[[ChunkResult], None] | None = None,
    ) -> RunCounts:
        """Convert every task into the staged files; returns the counts, checked (read = written + rejected).

        ``on_outcome(position, output)`` sees every record's outcome; ``on_chunk`` every chunk's rows."""
        assert self.rejects is not None, "open() the outputs first"
        results = self.results(convert_one, settings, tasks)
        if on_chunk is not None:
            results = _observed(results, on_chunk)
        bar = progress_bar(total, desc, self.progress)
        try:
            counts = drive(results, self.sinks, self.rejects, bar, on_outcome)
        finally:
            bar.close()
        counts.check()
        return counts

    def close(self) -> None:
        """Finish and close the staged files (safe to call more than once)."""
        self._resources.close()

    def write_text(self, name: str, text: str) -> None:
        """Stage a text file ``name`` (e.g. the dataset card) among the outputs; it appears on :meth:`commit`."""
        self._staged.stage(name).write_text(text, encoding="utf-8")

    def commit(self, stale: Iterable[str] = ()) -> None:
        """Rename every staged file to its final name and delete the earlier run's ``stale`` outputs.

        Raises :class:`DataPrepError` (committing nothing) if a ``README.md`` the data commands did not
        write has appeared in the folder since the run started.
        """
        self.close()
        if CARD_FILE in self._staged:
            self._check_card()
        self._staged.commit(stale=stale)

    def fail(self, message: str) -> DataPrepError:
        """Keep only ``rejects.jsonl`` (it says why nothing was written); the error to raise, with ``message``."""
        self.close()
        self._staged.commit([REJECTS_FILE])
        return DataPrepError(message)


def _observed(results: Iterable[ChunkResult], on_chunk: Callable[[ChunkResult], None]) -> Iterator[ChunkResult]:
    for result in results:
        result.load_batches()
        on_chunk(result)
        yield result


def add_common_args(parser: argparse.ArgumentParser, outputs: str) -> None:
    """``--output_dir`` (help: ``folder for <outputs>``), ``--row_group_size``, the image and execution flags."""
    parser.add_argument("--output_dir", required=True, help=f"folder for {outputs}")
    parser.add_argument("--row_group_size", type=int, default=256, help="parquet rows per row group (default 256)")
    add_image_args(parser)
    add_run_args(parser)


def common_options(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments every ``convert_*`` function takes, from the flags of :func:`add_common_args`."""
    return {
        "policy": policy_from_args(args),
        "image_root": args.image_root,
        "workers": args.workers,
        "chunk_size": args.chunk_size,
        "row_group_rows": args.row_group_size,
        "progress": not args.no_progress,
    }
