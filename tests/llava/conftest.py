"""Fixtures for the LLaVA-NeXT tests: activate am3-verl's LLaVA-NeXT support in the test process."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session", autouse=True)
def llava_support():
    """``am3_verl.models.register()`` (the plugin entry point calls it too; it is idempotent)."""
    import am3_verl.models

    am3_verl.models.register()
    assert am3_verl.models.is_registered()
