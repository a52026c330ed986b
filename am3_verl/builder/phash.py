"""Perceptual hashing for the clean stage: a difference hash (dHash) and near-duplicate detection.

dHash: shrink the image to ``(size + 1) x size`` grey pixels and record, for each pixel, whether it is
brighter than its right-hand neighbour: ``size ** 2`` bits that survive re-encoding, resizing, small
colour shifts and mild compression, while unrelated pictures differ in about half of their bits. Two
images are near duplicates when their hashes differ in at most ``max_distance`` bits (Hamming distance).
The same algorithm as ``imagehash.dhash``, written with Pillow and numpy to avoid a dependency.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image


def dhash(data: bytes, hash_size: int = 8) -> int:
    """The ``hash_size ** 2``-bit difference hash of encoded image ``data`` as an integer."""
    if hash_size < 2:
        raise ValueError(f"hash_size must be >= 2, got {hash_size}")
    with Image.open(io.BytesIO(data)) as image:
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            rgba = image.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            image_l = Image.alpha_composite(background, rgba).convert("L")
        else:
            image_l = image.convert("L")
    small = np.asarray(image_l.resize((hash_size + 1, hash_size), Image.Resampling.LANCZOS), dtype=np.int16)
    bits = (small[:, 1:] > small[:, :-1]).flatten()
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def hamming(a: int, b: int) -> int:
    """Bits in which two hashes differ."""
    return (a ^ b).bit_count()


@dataclass(frozen=True)
class NearDuplicate:
    """Image ``index`` is within ``distance`` bits of the earlier image ``duplicate_of``."""

    index: int
    duplicate_of: int
    distance: int


def near_duplicates(images: list[bytes], max_distance: int, hash_size: int = 8) -> list[NearDuplicate]:
    """The images to remove so that no two kept ones are near duplicates, keeping the earliest of each group.

    An image is compared with the images kept before it; it is removed when one of them is within
    ``max_distance`` bits (the closest one is reported).
    """
    kept: list[tuple[int, int]] = []
    removed = []
    for index, data in enumerate(images):
        h = dhash(data, hash_size)
        best = min(((hamming(h, kh), k) for k, kh in kept), default=None)
        if best is not None and best[0] <= max_distance:
            removed.append(NearDuplicate(index, best[1], best[0]))
        else:
            kept.append((index, h))
    return removed
