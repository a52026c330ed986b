"""One evaluation at a time per results folder: a second run into a busy folder fails fast instead of mixing caches."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from am3_verl.folder_lock import FolderBusy, FolderLock

LOCK_FILE = ".am3-eval.lock"

OutputFolderBusy = FolderBusy
"""Another process holds the results folder's lock (the shared :class:`am3_verl.folder_lock.FolderBusy`)."""


@contextmanager
def output_folder_lock(folder: str | Path) -> Iterator[None]:
    """Hold ``folder``'s lock for the block; raises :class:`OutputFolderBusy` at once if another process holds it.

    The lock is an OS file lock (released by the kernel if its holder dies, even by SIGKILL).
    """
    why = "two runs into one folder would mix their cached answers and overwrite each other's results."
    with FolderLock(folder, LOCK_FILE, holder="am3_verl.eval", why=why):
        yield
