"""Read a recipe's merged hydra overrides the way it would launch them (``AM3_PRINT_OVERRIDES=1``)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RECIPES = REPO / "recipes"


def recipe_overrides(script: Path, env: dict[str, str], *extra: str) -> list[str]:
    """The overrides ``script`` would pass to verl, with ``env`` set and ``extra`` appended by the caller."""
    result = subprocess.run(
        ["bash", str(script), *extra],
        env={**os.environ, **env, "AM3_PRINT_OVERRIDES": "1"},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout.splitlines()


def compose(config_name: str, overrides: list[str]):
    """Compose verl's hydra config ``config_name`` with ``overrides`` (fails on unknown keys)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from am3_verl.local.rollout import verl_config_dir

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=verl_config_dir(), version_base=None):
        return hydra_compose(config_name=config_name, overrides=overrides)
