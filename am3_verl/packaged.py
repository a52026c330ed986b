"""Files shipped inside the am3_verl package, found through ``importlib.resources`` (checkout and wheel alike).

The repository's ``recipes/`` folder is package data (``am3_verl/recipes`` links to it in a checkout and
holds a copy in a wheel), so code never looks for a repository checkout around the installed package.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def packaged_file(*parts: str) -> Path:
    """The file ``am3_verl/<parts...>`` as a filesystem path; ``FileNotFoundError`` naming it if absent."""
    path = Path(str(resources.files("am3_verl").joinpath(*parts)))
    if not path.exists():
        raise FileNotFoundError(f"{'/'.join(parts)} is not shipped in this am3-verl installation (looked at {path})")
    return path


def recipe(*parts: str) -> Path:
    """A file of the bundled recipes, e.g. ``recipe("agent_loops", "am3_dialogue.yaml")``."""
    return packaged_file("recipes", *parts)
