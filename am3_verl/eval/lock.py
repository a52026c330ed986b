"""One evaluation at a time per results folder: a second run into a busy folder fails fast instead of mixing caches."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from filelock import FileLock, Timeout

LOCK_FILE = ".am3-eval.lock"


class OutputFolderBusy(RuntimeError):
    """Another process holds the results folder's lock."""


@contextmanager
def output_folder_lock(folder: str | Path) -> Iterator[None]:
    """Hold ``folder``'s lock for the block; raises :class:`OutputFolderBusy` at once if another process holds it.

    The lock is an OS file lock (released by the kernel if its holder dies, even by SIGKILL).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(folder / LOCK_FILE, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise OutputFolderBusy(
            f"{folder} is in use by another am3_verl.eval process (lock {folder / LOCK_FILE}): two runs into one folder "
            "would mix their cached answers and overwrite each other's results. Wait for it, or pass another --output_dir."
        ) from None
    try:
        yield
    finally:
        lock.release()
