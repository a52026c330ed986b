"""Fixtures for the judge tests: a fresh process-wide judge cache and a clean judge environment."""

from __future__ import annotations

import pytest

from am3_verl.judges import config as judge_config
from am3_verl.clients import images as judge_images


@pytest.fixture(autouse=True)
def fresh_judges():
    """Each test starts without process-wide judges or cached image encodings from earlier tests."""
    judge_config._JUDGES.clear()
    judge_images.cache_clear()
    yield
    judge_config._JUDGES.clear()
    judge_images.cache_clear()


@pytest.fixture(autouse=True)
def no_judge_env(monkeypatch):
    """The judge environment variables are unset unless a test sets them."""
    for name in judge_config.ENV.values():
        monkeypatch.delenv(name, raising=False)
