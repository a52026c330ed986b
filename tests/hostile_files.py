"""Paths that must never be read as images (a FIFO, /dev/zero, an oversized sparse file, a folder) and a way
to call code on them that cannot hang the test run or exhaust the machine's memory when the code is wrong."""

from __future__ import annotations

import os
import resource
import threading
from pathlib import Path
from typing import Any, Callable

import pytest

CAP = 64 << 20
"""The image file cap (``am3_verl.clients.images.MAX_IMAGE_FILE_BYTES``), spelled out so a change is noticed."""
OVERSIZED = 65 << 20
"""Size of the sparse file: just over the cap."""

EXPECTED_REASON = {
    "fifo": r"is a FIFO \(named pipe\), not a regular file",
    "dev_zero": r"is a character device, not a regular file",
    "oversized": rf"has {OVERSIZED} bytes, more than the {CAP} allowed",
    "folder": r"is a folder, not a regular file",
}
"""Kind of hostile path -> a regex its error message must match."""


def hostile_paths(root: Path) -> dict[str, Path]:
    """Create (in ``root``) one path of each kind in :data:`EXPECTED_REASON`; /dev/zero is used as it is."""
    root.mkdir(parents=True, exist_ok=True)
    fifo = root / "pipe.png"
    os.mkfifo(fifo)
    oversized = root / "huge.png"
    with oversized.open("wb") as fh:
        fh.truncate(OVERSIZED)  # sparse: no disk space used
    folder = root / "folder.png"
    folder.mkdir()
    return {"fifo": fifo, "dev_zero": Path("/dev/zero"), "oversized": oversized, "folder": folder}


def _release_fifos(paths: list[Path]) -> None:
    """Unblock a reader stuck opening one of ``paths`` (a FIFO): open its write end and close it (EOF)."""
    for path in paths:
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass  # no reader waiting on this one


def _address_space_in_use() -> int:
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize in /proc/self/status")


def bounded_call(fn: Callable[[], Any], *, fifos: list[Path] = (), seconds: float = 60.0, headroom: int = 1 << 30) -> Any:
    """Run ``fn()`` and return its result or raise its exception, failing the test if it takes over ``seconds``.

    It runs in a daemon thread while the process may map at most ``headroom`` more bytes, so code that
    reads ``/dev/zero`` to the end gets a ``MemoryError`` instead of eating the machine; a call stuck
    opening one of ``fifos`` is released (and the test failed) when the time is up.
    """
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            outcome["error"] = exc

    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = _address_space_in_use() + headroom
    resource.setrlimit(resource.RLIMIT_AS, (min(cap, hard) if hard != resource.RLIM_INFINITY else cap, hard))
    try:
        thread = threading.Thread(target=target, daemon=True)
        thread.start()
        thread.join(seconds)
        if thread.is_alive():
            _release_fifos(list(fifos))
            thread.join(10)
            pytest.fail(f"the call did not finish within {seconds} s (blocked on a FIFO or device?)")
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")
