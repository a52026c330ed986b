"""Images as ``data:`` URLs for OpenAI-compatible requests, each distinct image encoded once per process,
and the one safe way to read an image file named by a path.

A dialogue's early images appear in the context of every later turn, and the rollouts of one prompt
carry the same images, so the same bytes would otherwise be base64-encoded many times per step.
:func:`image_data_url` keeps the encodings in an LRU bounded by total size.

:func:`read_image_file` is what every code path that opens an image path uses (the reward functions'
``raw_prompt`` parts, ``eval general``, results folders): it refuses FIFOs, devices and folders without
blocking on them, and files over a size cap, and its errors never quote a file's bytes.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import re
import stat
import threading
from collections import OrderedDict
from typing import Any, Mapping, NamedTuple

CACHE_BUDGET_BYTES = 128 * 1024**2
"""Upper bound on the total length of cached data URLs."""

MAX_IMAGE_FILE_BYTES = 64 << 20
"""Default cap on an image file's size (the same as data preparation's ``ImagePolicy.max_file_bytes``)."""

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
    # the bytes are not quoted: they may be any file's content (a key, a password file)
    raise ValueError(f"not an encoded PNG/JPEG/GIF/BMP/WebP image ({len(data)} bytes of another format)")


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


class ImageFileError(ValueError):
    """An image path that cannot be read; ``where`` names the record and field, ``reason`` says why."""

    def __init__(self, where: str, reason: str) -> None:
        super().__init__(f"{where}: {reason}")
        self.where = where
        self.reason = reason


_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)


def read_image_file(path: str | os.PathLike, max_bytes: int = MAX_IMAGE_FILE_BYTES, where: str = "image") -> bytes:
    """The bytes of the regular file at ``path``, at most ``max_bytes`` of them.

    Raises :class:`ImageFileError` (a ``ValueError``) naming ``where`` and the path when the file is
    missing or unreadable, is not a regular file (a FIFO, a device such as ``/dev/zero``, a folder, a
    socket), or is larger than ``max_bytes``. Never blocks on a FIFO or device, never reads more than
    ``max_bytes + 1`` bytes, and never quotes the file's content. The file is opened first and the
    checks are made on the open descriptor, so the path cannot be swapped between check and read.
    """
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except FileNotFoundError:
        raise ImageFileError(where, f"image file not found: {os.fspath(path)}") from None
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the path
        raise ImageFileError(where, f"cannot open image file {os.fspath(path)!r}: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ImageFileError(where, f"image path {os.fspath(path)} is {_file_kind(info.st_mode)}, not a regular file")
        _check_size(info.st_size, max_bytes, path, where)
        data = _read_at_most(fd, max_bytes + 1)
    except OSError as exc:
        raise ImageFileError(where, f"cannot read image file {os.fspath(path)}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    _check_size(len(data), max_bytes, path, where)  # the file grew after fstat
    return data


def _check_size(size: int, max_bytes: int, path: str | os.PathLike, where: str) -> None:
    if size > max_bytes:
        raise ImageFileError(where, f"image file {os.fspath(path)} has {size} bytes, more than the {max_bytes} allowed")


def _read_at_most(fd: int, limit: int) -> bytes:
    chunks, total = [], 0
    while total < limit:
        chunk = os.read(fd, min(1 << 20, limit - total))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)


def _file_kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "a special file"


def content_image_bytes(part: Mapping[str, Any], where: str, max_file_bytes: int = MAX_IMAGE_FILE_BYTES) -> bytes:
    """Encoded bytes of one verl ``{"type": "image", ...}`` / OpenAI ``image_url`` content part.

    Inline ``bytes`` win; then a ``data:`` URL, raw bytes, a local path (read by :func:`read_image_file`
    with ``max_file_bytes``) or a PIL image (saved as RGB PNG). Raises ``ValueError`` naming ``where``
    for anything else (remote URLs, FIFOs, devices, folders and oversized files included).
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
        return read_image_file(path, max_file_bytes, where)
    if image is not None and hasattr(image, "save"):  # a PIL image
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format="PNG")
        return buffer.getvalue()
    raise ValueError(f"{where}: cannot read the image (keys {sorted(part)}); give bytes, a path or a PIL image")
