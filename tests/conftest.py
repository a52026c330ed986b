"""Shared fixtures: the offline tiny models.

``make test`` builds the tiny models once into ``.venv/am3-tiny-models`` and points ``AM3_TINY_MODELS``
at them; run directly, pytest builds them into a temporary folder for the session.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory) -> Path:
    """Folder holding ``qwen2_5_vl/`` and ``llava_next/`` tiny models (built if ``AM3_TINY_MODELS`` is unset)."""
    from am3_verl.local.tiny_models import build_all

    configured = os.environ.get("AM3_TINY_MODELS")
    root = Path(configured).resolve() if configured else tmp_path_factory.mktemp("tiny-models")
    build_all(root)
    return root


@pytest.fixture(scope="session")
def tiny_qwen_dir(tiny_models_dir) -> Path:
    """The tiny Qwen2.5-VL folder."""
    return tiny_models_dir / "qwen2_5_vl"


@pytest.fixture(scope="session")
def tiny_llava_dir(tiny_models_dir) -> Path:
    """The tiny LLaVA-NeXT folder."""
    return tiny_models_dir / "llava_next"


@pytest.fixture(scope="session")
def vllm_venv() -> Path:
    """The vLLM CPU environment (``make setup-vllm``; ``AM3_VLLM_VENV`` names another). Missing, the test fails."""
    venv = Path(os.environ.get("AM3_VLLM_VENV", Path(__file__).resolve().parents[1] / ".venv-vllm"))
    if not (venv / "bin" / "python").is_file():
        pytest.fail(f"no vLLM CPU environment at {venv}: build it with `make setup-vllm` (or set AM3_VLLM_VENV)")
    return venv
