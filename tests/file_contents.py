"""Compare generated folders with committed ones: text byte for byte, PNG images pixel for pixel.

A PNG's bytes depend on the zlib build that compressed it, so a regenerated image is compared by its
decoded pixels (mode, size, pixel bytes), which are what the generator promises.
"""

from __future__ import annotations

import io
from pathlib import Path


def content(name: str, data: bytes) -> object:
    """What must not change in a file: a PNG's decoded pixels, any other file's bytes."""
    if not name.endswith(".png"):
        return data
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return image.mode, image.size, image.tobytes()


def files(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` by relative path."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def differences(generated: Path, committed: Path) -> list[str]:
    """Relative paths missing on one side or whose :func:`content` differs; empty when the folders agree."""
    new, old = files(generated), files(committed)
    names = sorted(set(new) | set(old))
    return [n for n in names if n not in new or n not in old or content(n, new[n]) != content(n, old[n])]
