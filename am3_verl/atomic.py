"""Outputs that appear complete or not at all: write under a temporary name in the same folder, then rename.

Every writer here works the same way: the content goes to ``<name>.partial`` next to the target, is
flushed to disk, and is renamed over the target only when all of it was written. Any failure (a full
disk, an exception while producing the content, Ctrl-C) removes the partial file and leaves an earlier
file at the target untouched.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

PARTIAL_SUFFIX = ".partial"


def partial_path(path: str | os.PathLike) -> Path:
    """The temporary name the writers here use for ``path``: ``<name>.partial`` in the same folder."""
    path = Path(path)
    return path.with_name(path.name + PARTIAL_SUFFIX)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield the temporary path for ``path``; when the block ends normally, move what was written there to ``path``.

    For writers that take a file name (another library's ``write_table``, a ``write_rejects(path, ...)``).
    The block must create the file; it is flushed to disk before the rename. When the block raises, the
    temporary file is removed and ``path`` is left as it was; an ``OSError`` that names no file (a
    failed write, e.g. ``ENOSPC``) is re-raised as the same kind of ``OSError`` naming ``path``.
    """
    path = Path(path)
    partial = partial_path(path)
    try:
        yield partial
        fsync_file(partial)
        os.replace(partial, path)
    except OSError as exc:
        if exc.errno is None or exc.filename is not None:
            raise
        # a failed write() names no file; name the output, so "disk full" says which one
        raise OSError(exc.errno, exc.strerror or str(exc), os.fspath(path)) from exc
    finally:
        partial.unlink(missing_ok=True)


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Yield a file open for writing (``mode`` ``"w"`` or ``"wb"``) that becomes ``path`` when the block ends normally.

    As :func:`atomic_path`: on an exception (the write's own ``OSError`` included) nothing appears at ``path``.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes whole files: mode must be 'w' or 'wb', not {mode!r}")
    with atomic_path(path) as partial:
        with open(partial, mode, encoding=None if "b" in mode else encoding) as fh:
            yield fh


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` through ``path.partial`` and an atomic rename; returns ``path``.

    A failure or interruption leaves any earlier file at ``path`` untouched and no partial file behind.
    """
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through ``path.partial`` and an atomic rename; returns ``path`` (as above)."""
    with atomic_open(path, "wb") as fh:
        fh.write(data)
    return Path(path)


def fsync_file(path: str | os.PathLike) -> None:
    """Flush ``path``'s content to disk. Called before a rename, so a crash cannot leave the new name pointing
    at unwritten blocks."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
