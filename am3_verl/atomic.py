"""Outputs that appear complete or not at all: write under a temporary name in the same folder, then rename."""

from __future__ import annotations

import os
from pathlib import Path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` through ``path.partial`` and an atomic rename; returns ``path``.

    A failure or interruption leaves any earlier file at ``path`` untouched and no partial file behind.
    """
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through ``path.partial`` and an atomic rename; returns ``path`` (as above)."""
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    try:
        partial.write_bytes(data)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path
