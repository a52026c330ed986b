"""Small image and record makers shared by the data-preparation tests."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from PIL import Image


def png_bytes(size: tuple[int, int] = (64, 48), color: tuple[int, int, int] = (200, 40, 40)) -> bytes:
    """A small solid-colour PNG."""
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def write_jsonl(path: Path, records: list[Any]) -> Path:
    """Write ``records`` one JSON value a line (strings are written as raw lines)."""
    with open(path, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write((record if isinstance(record, str) else json.dumps(record)) + "\n")
    return path


def read_rejects(path: Path) -> list[dict[str, Any]]:
    """The rows of a rejects.jsonl file."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
