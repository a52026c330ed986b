"""Images as ``data:`` URLs for OpenAI-compatible requests, each distinct image encoded once per process.

A dialogue's early images appear in the context of every later turn, and the rollouts of one prompt
carry the same images, so the same bytes would otherwise be base64-encoded many times per step.
:func:`image_data_url` keeps the encodings in an LRU bounded by total size.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import re
import threading
from collections import OrderedDict
from typing import Any, Mapping, NamedTuple

CACHE_BUDGET_BYTES = 128 * 1024**2
"""Upper bound on the total length of cached data URLs."""

_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"BM", "image/bmp"),
)

_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+);base64,(?P<b64>.*)$", re.DOTALL)

_lock = threading.Lock()
_cache: OrderedDict[bytes, str] = OrderedDict()
_cache_size = 0
_hits = 0
_misses = 0


class CacheInfo(NamedTuple):
    """The data-URL cache's counters, like ``functools.lru_cache``'s ``cache_info()``."""

    hits: int
    misses: int
    """Encodings performed (each distinct image once while it stays cached)."""
    entries: int
    size_bytes: int


def sniff_mime(data: bytes) -> str:
    """The MIME type of encoded image bytes (PNG, JPEG, GIF, BMP, WebP); raises ``ValueError`` otherwise."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    for magic, mime in _MAGIC:
        if data.startswith(magic):
            return mime
    raise ValueError(f"not an encoded PNG/JPEG/GIF/BMP/WebP image (first bytes {data[:8]!r})")


def image_data_url(data: bytes) -> str:
    """``data:<mime>;base64,...`` for ``data`` (cached); raises ``ValueError`` for unknown formats."""
    global _cache_size, _hits, _misses
    with _lock:
        url = _cache.get(data)
        if url is not None:
            _hits += 1
            _cache.move_to_end(data)
            return url
    url = f"data:{sniff_mime(data)};base64,{base64.b64encode(data).decode('ascii')}"
    with _lock:
        _misses += 1
        if data not in _cache:
            _cache[data] = url
            _cache_size += len(url)
            while _cache_size > CACHE_BUDGET_BYTES and _cache:
                _, dropped = _cache.popitem(last=False)
                _cache_size -= len(dropped)
    return url


def cache_info() -> CacheInfo:
    """Hits, misses (encodings performed), entries and bytes of the process-wide data-URL cache."""
    with _lock:
        return CacheInfo(_hits, _misses, len(_cache), _cache_size)


def cache_clear() -> None:
    """Forget every cached encoding and reset the counters (like ``functools.lru_cache``'s ``cache_clear``)."""
    global _cache_size, _hits, _misses
    with _lock:
        _cache.clear()
        _cache_size = _hits = _misses = 0


def decode_data_url(url: str) -> bytes | None:
    """The bytes of a ``data:<mime>;base64,...`` URL, or None if ``url`` is not a valid one."""
    match = _DATA_URL.match(url)
    if match is None:
        return None
    try:
        return base64.b64decode(match.group("b64"), validate=True)
    except (binascii.Error, ValueError):
        return None


def content_image_bytes(part: Mapping[str, Any], where: str) -> bytes:
    """Encoded bytes of one verl ``{"type": "image", ...}`` / OpenAI ``image_url`` content part.

    Inline ``bytes`` win; then a ``data:`` URL, raw bytes, a local path or a PIL image (saved as RGB PNG).
    Raises ``ValueError`` naming ``where`` for anything else (remote URLs included).
    """
    if part.get("type") == "image_url":
        url = (part.get("image_url") or {}).get("url", "")
        data = decode_data_url(url) if isinstance(url, str) else None
        if data is None:
            raise ValueError(f"{where}: only data: image URLs can be judged offline, got {str(url)[:60]!r}")
        return data
    if isinstance(part.get("bytes"), (bytes, bytearray)):
        return bytes(part["bytes"])
    image = part.get("image")
    if isinstance(image, (bytes, bytearray)):
        return bytes(image)
    if isinstance(image, (str, os.PathLike)) and not str(image).startswith(("http://", "https://")):
        path = str(image)[len("file://") :] if str(image).startswith("file://") else image
        with open(path, "rb") as fh:
            return fh.read()
    if image is not None and hasattr(image, "save"):  # a PIL image
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format="PNG")
        return buffer.getvalue()
    raise ValueError(f"{where}: cannot read the image (keys {sorted(part)}); give bytes, a path or a PIL image")
