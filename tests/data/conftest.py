"""Helpers for the data-preparation tests: a writable copy of the sample data and small image/record makers."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from am3_verl.data.sample import SAMPLE_DIR


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


@pytest.fixture
def sample_copy(tmp_path) -> Path:
    """A writable copy of the bundled sample folder."""
    target = tmp_path / "sample"
    shutil.copytree(SAMPLE_DIR, target)
    return target


@pytest.fixture
def hf_cache(tmp_path, monkeypatch) -> Path:
    """Point the `datasets` cache (used by verl's RLHFDataset) at a temporary folder."""
    import datasets

    cache = tmp_path / "hf-cache"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    monkeypatch.setenv("HF_DATASETS_CACHE", str(cache))
    return cache
