"""One run at a time per output folder: a second run into a busy folder fails fast instead of mixing outputs.

Used by ``python -m am3_verl.eval`` (results folders) and by the data-preparation commands (their
``--output_dir``). Each command family has its own hidden lock file in the folder, so two evaluations
exclude each other, and two conversions do. The lock is an OS file lock (``filelock``, ``flock`` on
Linux): the kernel releases it when its holder ends, even by SIGKILL. The lock file itself stays in the
folder after release (removing it would let a waiting opener lock a file no one else can see).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout


class FolderBusy(RuntimeError):
    """Another process holds the folder's lock."""


class FolderLock:
    """The lock of ``folder`` for one command family; use it as a context manager, or ``acquire``/``release``.

    ``holder`` names the command family in the error (``"am3_verl.eval"``); ``why`` says what two runs
    into one folder would break (one sentence).
    """

    def __init__(self, folder: str | Path, lock_name: str, holder: str, why: str) -> None:
        self.folder = Path(folder)
        self.path = self.folder / lock_name
        self.holder = holder
        self.why = why
        self._lock = FileLock(self.path, timeout=0)

    def acquire(self) -> None:
        """Take the lock now (creating the folder if needed); raises :class:`FolderBusy` at once if another process holds it."""
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            self._lock.acquire()
        except Timeout:
            raise FolderBusy(
                f"{self.folder} is in use by another {self.holder} process (lock {self.path}): {self.why} "
                "Wait for it, or pass another --output_dir."
            ) from None

    def release(self) -> None:
        """Give the lock back (a no-op when it is not held)."""
        if self._lock.is_locked:
            self._lock.release()

    def __enter__(self) -> "FolderLock":
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()
