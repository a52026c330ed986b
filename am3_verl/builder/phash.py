"""Near-duplicate images for the clean stage, by difference hash (``imagehash.dhash``).

dHash records, for each pixel of a ``(size + 1) x size`` grey thumbnail, whether it is brighter than its
right-hand neighbour: ``size ** 2`` bits that survive re-encoding, resizing, small colour shifts and mild
compression, while unrelated pictures differ in about half of their bits. Two images are near duplicates
when their hashes differ in at most ``max_distance`` bits (Hamming distance, ``ImageHash`` subtraction).
Transparent images are flattened onto white first (``imagehash`` would read transparent pixels as black).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import imagehash
from PIL import Image


def dhash(data: bytes, hash_size: int = 8) -> imagehash.ImageHash:
    """The ``hash_size ** 2``-bit difference hash of encoded image ``data``; ``ValueError`` for ``hash_size < 2``."""
    with Image.open(io.BytesIO(data)) as image:
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            rgba = image.convert("RGBA")
            flat = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
        else:
            flat = image.convert("L")
        return imagehash.dhash(flat, hash_size)


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
    kept: list[tuple[int, imagehash.ImageHash]] = []
    removed = []
    for index, data in enumerate(images):
        h = dhash(data, hash_size)
        best = min(((int(h - kh), k) for k, kh in kept), default=None)
        if best is not None and best[0] <= max_distance:
            removed.append(NearDuplicate(index, best[1], best[0]))
        else:
            kept.append((index, h))
    return removed
