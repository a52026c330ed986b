"""The conversion loop shared by the converters: chunks of records through a process pool, in order.

* :func:`ordered_map` – runs a function over chunks on ``workers`` processes and yields results in
  submission order, with a bounded number of chunks in flight (memory stays flat whatever the input size).
* :class:`ChunkResult` – what a worker returns for one chunk: one Arrow batch per output, the rejects,
  and the per-record outcome sequence.
* :class:`RowBuilder` – collects converted rows inside a worker and turns them into Arrow batches.
* :class:`ParquetSink` – writes batches to a parquet file in fixed-size row groups with fixed writer
  settings (:func:`parquet_settings`), so the file is byte-for-byte the same for the same rows.

Chunks are formed from the input order with a fixed size, and rows are written in input order, so the
output does not depend on the number of workers.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import tempfile
import threading
import time
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq

from am3_verl.atomic import fsync_file
from am3_verl.data.errors import DataPrepError
from am3_verl.data.validate import Reject, RejectWriter

REJECTED = "reject"
"""The outcome name of a rejected record."""

T = TypeVar("T")
R = TypeVar("R")

IMAGE_TYPE = pa.list_(pa.struct([pa.field("bytes", pa.binary())]))
"""A list of ``{"bytes": ...}`` images, the form verl's datasets read."""
MESSAGES_TYPE = pa.list_(pa.struct([pa.field("role", pa.string()), pa.field("content", pa.string())]))
"""A chat: a list of ``{"role", "content"}`` messages."""

_FIXED_SETTINGS: dict[str, Any] = {
    "use_dictionary": False,
    "write_statistics": False,
    "version": "2.6",
    "data_page_version": "1.0",
}


def _leaf_paths(name: str, type_: pa.DataType) -> list[str]:
    if pa.types.is_list(type_) or pa.types.is_large_list(type_):
        return _leaf_paths(f"{name}.list.element", type_.value_type)
    if pa.types.is_struct(type_):
        return [p for i in range(type_.num_fields) for p in _leaf_paths(f"{name}.{type_.field(i).name}", type_.field(i).type)]
    return [name]


def parquet_settings(schema: pa.Schema) -> dict[str, Any]:
    """The fixed ``ParquetWriter`` settings for ``schema`` (used by every output and the benchmark's floor).

    Text columns are zstd level 3; image bytes (leaf columns named ``bytes``: PNG/JPEG, already
    compressed) are stored uncompressed. No dictionary pages, no statistics, no timestamps: the same
    rows always give the same file.
    """
    leaves = [p for f in schema for p in _leaf_paths(f.name, f.type)]
    compression = {p: ("none" if p.endswith(".bytes") else "zstd") for p in leaves}
    levels = {p: 3 for p, codec in compression.items() if codec == "zstd"}
    return {"compression": compression, "compression_level": levels, **_FIXED_SETTINGS}


def default_workers() -> int:
    """The number of CPUs this process may use (at least 1)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def chunked(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive lists of ``size`` items (the last one shorter)."""
    chunk: list[T] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def ordered_map(fn: Callable[[T], R], chunks: Iterable[T], workers: int, max_in_flight: int | None = None) -> Iterator[R]:
    """``map(fn, chunks)`` on ``workers`` processes, results in order, at most ``max_in_flight`` pending.

    ``workers <= 1`` runs in this process. ``fn`` must be picklable (a module-level function or a
    ``functools.partial`` of one). A worker exception is raised here, with pending work cancelled.
    """
    if workers <= 1:
        yield from map(fn, chunks)
        return
    limit = max_in_flight or 3 * workers
    with ProcessPoolExecutor(
        max_workers=workers, mp_context=_worker_context(), initializer=exit_with_parent, initargs=(os.getpid(),)
    ) as pool:
        pending: deque[Future[R]] = deque()
        try:
            for chunk in chunks:
                pending.append(pool.submit(fn, chunk))
                if len(pending) >= limit:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        except BaseException:
            for future in pending:
                future.cancel()
            raise


def exit_with_parent(parent_pid: int, poll_s: float = 1.0) -> None:
    """Worker initializer: end this worker soon after the converting process ``parent_pid`` is gone.

    A killed converter (SIGKILL runs no cleanup) would otherwise leave its workers waiting on their task
    queue forever, and with them the forkserver, which stays up while any worker holds its pipe.
    """

    def watch() -> None:
        while _process_exists(parent_pid):
            time.sleep(poll_s)
        os._exit(1)

    threading.Thread(target=watch, name="am3-exit-with-parent", daemon=True).start()


_PRELOAD = ["am3_verl.data.intersafe_v", "am3_verl.data.cold_start", "am3_verl.data.safemt"]


def _worker_context() -> multiprocessing.context.BaseContext:
    """Fresh worker processes that never inherit this process's threads (torch, pyarrow pools).

    ``forkserver`` where available: its server imports the converters once, then forks each worker
    from that clean state (fast); ``spawn`` elsewhere.
    """
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(_PRELOAD)
        return context
    return multiprocessing.get_context("spawn")


def warm_up_workers(workers: int) -> None:
    """Start the forkserver now (it imports the converters in the background) when ``workers > 1``.

    Called before a converter's first pass so that the imports overlap with it; a no-op elsewhere.
    """
    if workers > 1 and _worker_context().get_start_method() == "forkserver":
        from multiprocessing import forkserver

        forkserver.ensure_running()


@dataclass
class ChunkResult:
    """A worker's answer for one chunk of records."""

    batches: dict[str, pa.RecordBatch]
    """Converted rows per output name (only outputs that got rows)."""
    rejects: list[Reject]
    """One per rejected record, in input order."""
    outcomes: list[tuple[int, str]]
    """Per input record, in order: ``(position, output name)``, the name being ``"reject"`` for a reject."""
    images: int = 0
    """Images stored."""
    resized: int = 0
    """Images shrunk to the max-pixels bound."""
    spooled: dict[str, str] = field(default_factory=dict)
    """Output name -> Arrow IPC file holding that output's rows (instead of ``batches``)."""

    def load_batches(self) -> dict[str, pa.RecordBatch]:
        """The batches, mapping spooled files into memory (zero-copy; each file is unlinked once mapped)."""
        for name, path in self.spooled.items():
            with pa.memory_map(path) as source:
                self.batches[name] = pa.ipc.open_file(source).get_batch(0)
            os.unlink(path)
        self.spooled = {}
        return self.batches


@dataclass
class RowBuilder:
    """Collects rows per output inside a worker; :meth:`result` packs them into a :class:`ChunkResult`.

    With a ``spool_dir``, each output's batch is written there as an Arrow IPC file and only its path
    travels back to the main process: image bytes cross the process boundary once, through the page
    cache, instead of being pickled and piped.
    """

    schemas: dict[str, pa.Schema]
    spool_dir: str | None = None
    rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    rejects: list[Reject] = field(default_factory=list)
    outcomes: list[tuple[int, str]] = field(default_factory=list)
    images: int = 0
    resized: int = 0

    def add(self, position: int, output: str, row: dict[str, Any]) -> None:
        """Record the converted row of input record ``position`` for ``output``."""
        self.rows.setdefault(output, []).append(row)
        self.outcomes.append((position, output))

    def also(self, output: str, row: dict[str, Any]) -> None:
        """Add a second form of the record just added (e.g. an eval copy) without counting it again."""
        self.rows.setdefault(output, []).append(row)

    def reject(self, reject: Reject) -> None:
        """Record a rejected record."""
        self.rejects.append(reject)
        self.outcomes.append((reject.position, REJECTED))

    def result(self) -> ChunkResult:
        """The chunk's batches (built against the fixed schemas), rejects and outcomes."""
        batches = {name: pa.RecordBatch.from_pylist(rows, schema=self.schemas[name]) for name, rows in self.rows.items()}
        spooled: dict[str, str] = {}
        if self.spool_dir is not None and self.outcomes:
            for name, batch in batches.items():
                path = os.path.join(self.spool_dir, f"{self.outcomes[0][0]:012d}-{name}.arrow")
                with pa.OSFile(path, "wb") as sink, pa.ipc.new_file(sink, batch.schema) as writer:
                    writer.write_batch(batch)
                spooled[name] = path
            batches = {}
        return ChunkResult(batches, self.rejects, self.outcomes, self.images, self.resized, spooled)


SPOOL_PREFIX = ".am3-spool-"


def remove_stale_spools(output_dir: Path) -> list[Path]:
    """Delete spool folders left in ``output_dir`` by runs whose process no longer exists (killed ones)."""
    removed = []
    for path in Path(output_dir).glob(f"{SPOOL_PREFIX}*"):
        pid = path.name.removeprefix(SPOOL_PREFIX).split("-", 1)[0]
        if pid.isdigit() and not _process_exists(int(pid)):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def spool_dir(output_dir: Path, workers: int) -> Iterator[str | None]:
    """A private folder in ``output_dir`` for worker results (None when running in-process); removed after."""
    if workers <= 1:
        yield None
        return
    remove_stale_spools(output_dir)
    path = tempfile.mkdtemp(prefix=f"{SPOOL_PREFIX}{os.getpid()}-", dir=output_dir)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def prepare_output_dir(path: str | Path) -> Path:
    """Create ``path`` (with parents) and check it takes files; raises :class:`DataPrepError` saying why not.

    An empty (or blank) ``path`` is refused rather than read as the working directory.
    """
    if not str(path).strip():
        raise DataPrepError("--output_dir is empty; name the folder to write to (use '.' for the working directory)")
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".am3-probe-"):
            pass
    except FileExistsError:
        raise DataPrepError(f"--output_dir {path} exists and is not a folder") from None
    except NotADirectoryError:
        raise DataPrepError(f"--output_dir {path} is inside something that is not a folder") from None
    except OSError as exc:
        raise DataPrepError(f"--output_dir {path} cannot be written: {exc.strerror or exc}") from None
    return path


class StagedOutputs:
    """A run's output files, written under temporary names and renamed to their final names only on success.

    A failed, interrupted or killed run leaves no complete-looking file and never touches the outputs of
    an earlier run; a committed run also removes the earlier run's outputs it did not produce (``stale``).
    """

    def __init__(self, out_dir: Path):
        self.out_dir = Path(out_dir)
        self._partial: dict[str, Path] = {}

    def __contains__(self, name: str) -> bool:
        """Whether output ``name`` is staged (and not yet committed or discarded)."""
        return name in self._partial

    def stage(self, name: str) -> Path:
        """The temporary path to write output ``name`` to (a hidden ``.partial`` file in the output folder)."""
        self._partial[name] = self.out_dir / f".{name}.partial"
        return self._partial[name]

    def commit(self, names: Iterable[str] | None = None, stale: Iterable[str] = ()) -> None:
        """Flush the staged files ``names`` (default: all) to disk and rename them to their final names, delete
        ``stale`` outputs, discard the rest."""
        names = list(self._partial) if names is None else list(names)
        for name in names:
            fsync_file(self._partial[name])  # before any rename: a crash cannot leave a final name on unwritten blocks
        for name in stale:
            (self.out_dir / name).unlink(missing_ok=True)
        for name in names:
            os.replace(self._partial.pop(name), self.out_dir / name)
        self.discard()

    def discard(self) -> None:
        """Delete every staged file not committed (safe to call at any time, also after :meth:`commit`)."""
        for partial in self._partial.values():
            partial.unlink(missing_ok=True)
        self._partial.clear()


class ParquetSink:
    """A parquet file written in row groups of ``row_group_rows`` rows with :func:`parquet_settings`."""

    def __init__(self, path: Path, schema: pa.Schema, row_group_rows: int = 256):
        self.path = path
        self.schema = schema
        self.row_group_rows = row_group_rows
        self.rows = 0
        self._pending: list[pa.RecordBatch] = []
        self._pending_rows = 0
        self._writer = pq.ParquetWriter(str(path), schema, **parquet_settings(schema))

    def write(self, batch: pa.RecordBatch | pa.Table) -> None:
        """Queue rows; full row groups are written as soon as they are complete."""
        batches: Sequence[pa.RecordBatch] = batch.to_batches() if isinstance(batch, pa.Table) else [batch]
        for item in batches:
            if item.num_rows:
                self._pending.append(item)
                self._pending_rows += item.num_rows
                self.rows += item.num_rows
        if self._pending_rows >= self.row_group_rows:
            self._flush(final=False)

    def _flush(self, final: bool) -> None:
        if not self._pending_rows:
            return
        table = pa.Table.from_batches(self._pending, schema=self.schema)
        full = (table.num_rows // self.row_group_rows) * self.row_group_rows
        cut = table.num_rows if final else full
        if cut:
            # One contiguous chunk per write: page boundaries then depend on the rows only, not on how
            # the input was cut into work units.
            self._writer.write_table(table.slice(0, cut).combine_chunks(), row_group_size=self.row_group_rows)
        rest = table.slice(cut)
        self._pending = rest.combine_chunks().to_batches() if rest.num_rows else []
        self._pending_rows = rest.num_rows

    def close(self) -> None:
        """Write what is left and close the file."""
        self._flush(final=True)
        self._writer.close()


@dataclass
class RunCounts:
    """What a conversion consumed and produced; ``read == sum(written.values()) + rejected`` always."""

    read: int = 0
    written: dict[str, int] = field(default_factory=dict)
    rejected: int = 0
    images: int = 0
    resized: int = 0

    def check(self) -> None:
        """Raise if a record went missing: read must equal written + rejected."""
        total = sum(self.written.values()) + self.rejected
        if self.read != total:
            raise RuntimeError(f"record count mismatch: read {self.read} != written {total - self.rejected} + rejected {self.rejected}")


def drive(
    results: Iterable[ChunkResult],
    sinks: dict[str, ParquetSink],
    rejects: RejectWriter,
    progress: Any = None,
    on_outcome: Callable[[int, str], None] | None = None,
) -> RunCounts:
    """Consume chunk results in order: batches to their sinks, rejects to the rejects file, counts updated."""
    counts = RunCounts()
    for result in results:
        for name, batch in result.load_batches().items():
            sinks[name].write(batch)
        for reject in result.rejects:
            rejects.write(reject)
        for position, name in result.outcomes:
            counts.read += 1
            if name == REJECTED:
                counts.rejected += 1
            else:
                counts.written[name] = counts.written.get(name, 0) + 1
            if on_outcome is not None:
                on_outcome(position, name)
        counts.images += result.images
        counts.resized += result.resized
        if progress is not None:
            progress.update(len(result.outcomes))
    return counts
