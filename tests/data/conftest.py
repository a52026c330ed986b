"""Fixtures for the data-preparation tests: a writable copy of the sample data, a private `datasets` cache."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from am3_verl.data.sample import SAMPLE_DIR


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
