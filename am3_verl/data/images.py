"""Images: read an image entry, check that it decodes and has a usable size, optionally shrink it.

An entry is a path (relative to the data file's folder, or absolute; ``file://`` allowed), a ``data:`` URI,
or ``{"bytes": ...}``. The stored form is encoded file bytes, as verl reads them (``{"bytes": ...}``), always
in one of the formats :func:`am3_verl.clients.images.sniff_mime` accepts (PNG, JPEG, GIF, BMP, WebP), the
set the judges and the reward send on: the original bytes when the image is in that set and needs no
resize; a lossless PNG of the same pixels when Pillow decodes it but it is in another format (TIFF, PPM,
ICO, TGA, ...: only the first frame or the largest icon, which is what a decoder shows); a re-encoded
image when it is shrunk (JPEG stays JPEG at quality 95, everything else becomes PNG). Every image is fully
decoded once, so truncated files are caught here rather than in training.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote_to_bytes

from PIL import Image

from am3_verl.clients.images import ImageFileError, read_image_file, sniff_mime


class ImageCheckError(ValueError):
    """An image that cannot be used; the message says why (missing, does not decode, too small...)."""


@dataclass(frozen=True)
class ImagePolicy:
    """Size rules and the optional resize bound, shared by all converters."""

    max_pixels: int | None = None
    """Shrink images with more pixels than this (aspect ratio kept); None keeps every image as it is."""
    min_side: int = 28
    """Reject images whose shorter side is below this (Qwen2.5-VL's patch merge needs 28 px)."""
    max_aspect_ratio: float = 200.0
    """Reject images whose long side / short side exceeds this (Qwen2.5-VL's limit)."""
    max_source_pixels: int = 89_478_485
    """Reject images with more pixels than this before decoding them (Pillow's decompression-bomb bound)."""
    max_file_bytes: int = 64 << 20
    """Reject image files larger than this before reading them."""
    image_root: Path | None = None
    """When set (``--image_root``), image paths must resolve to regular files inside this folder."""

    def __post_init__(self) -> None:
        if self.max_pixels is not None and self.max_pixels < self.min_side * self.min_side:
            raise ValueError(f"max_pixels {self.max_pixels} is below min_side^2 = {self.min_side**2}")
        if self.min_side < 1 or self.max_aspect_ratio < 1:
            raise ValueError("min_side must be >= 1 and max_aspect_ratio >= 1")


def read_image_source(entry: Any, base_dir: Path, policy: ImagePolicy | None = None) -> bytes:
    """The encoded bytes of one image entry; raises :class:`ImageCheckError` naming the problem.

    A path must name a regular file (not a device, FIFO or folder) of at most ``policy.max_file_bytes``,
    inside ``policy.image_root`` when one is set; all is checked before a byte is read.
    """
    policy = policy or ImagePolicy()
    if isinstance(entry, dict):
        data = entry.get("bytes")
        if not isinstance(data, (bytes, bytearray)):
            raise ImageCheckError("inline image has no bytes")
        return bytes(data)
    if hasattr(entry, "bytes") and isinstance(entry.bytes, (bytes, bytearray)):  # ImageBytes model
        return bytes(entry.bytes)
    if not isinstance(entry, str) or not entry.strip():
        raise ImageCheckError(f"expected a path, a data: URI or {{'bytes': ...}}, found {type(entry).__name__}")
    if entry.startswith("data:"):
        return _decode_data_uri(entry)
    if entry.startswith(("http://", "https://")):
        raise ImageCheckError(f"remote image {entry!r}: only local files, data: URIs and inline bytes are read")
    if "\0" in entry:
        raise ImageCheckError(f"image path {entry!r} holds a NUL byte, which no file name can")
    path = Path(entry.removeprefix("file://"))
    if not path.is_absolute():
        path = base_dir / path
    try:
        if policy.image_root is not None and not _resolved(path).is_relative_to(Path(policy.image_root).resolve()):
            raise ImageCheckError(f"image path {path} is outside --image_root {policy.image_root}")
        return read_image_file(path, policy.max_file_bytes)
    except ImageCheckError:
        raise
    except ImageFileError as exc:
        raise ImageCheckError(exc.reason) from None
    except FileNotFoundError:
        raise ImageCheckError(f"image file not found: {path}") from None
    except OSError as exc:
        raise ImageCheckError(f"cannot read image file {path}: {exc.strerror or exc}") from None
    except ValueError as exc:  # a path the OS cannot take (e.g. text that is not valid Unicode)
        raise ImageCheckError(f"image path {str(path)!r} cannot be used: {exc}") from None


def _resolved(path: Path) -> Path:
    """``path.resolve()``, with a symlink loop (pathlib's RuntimeError) as an :class:`ImageCheckError`."""
    try:
        return path.resolve()
    except RuntimeError as exc:
        raise ImageCheckError(f"image path {path} is a symlink loop ({exc})") from None


def _decode_data_uri(uri: str) -> bytes:
    header, sep, payload = uri.partition(",")
    if not sep:
        raise ImageCheckError("data: URI has no ',' separator")
    if header.endswith(";base64"):
        try:
            return base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ImageCheckError(f"data: URI is not valid base64: {exc}") from None
    return unquote_to_bytes(payload)


def prepare_image(data: bytes, policy: ImagePolicy) -> tuple[bytes, bool]:
    """Decode ``data`` fully, apply the size rules, shrink past ``policy.max_pixels``.

    Returns ``(bytes to store, resized?)``: the bytes are always in the set :func:`sniff_mime` accepts
    (see the module docstring). Raises :class:`ImageCheckError` for an image that does not decode, breaks
    a size rule, or cannot be stored losslessly as PNG. Deterministic: the same input and policy give the
    same bytes.
    """
    if not data:
        raise ImageCheckError("image is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
                _check_size(width, height, policy)
                image.load()
                if policy.max_pixels is None or width * height <= policy.max_pixels:
                    return (data if _is_accepted(data, image.format) else _lossless_png(image)), False
                return _shrink(image, policy), True
    except ImageCheckError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageCheckError(f"image too large: {exc}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageCheckError(f"image does not decode: {exc}") from None


_PILLOW_FORMATS = {
    "image/png": {"PNG"},
    "image/jpeg": {"JPEG", "MPO"},  # MPO: a JPEG with extra pictures appended, read as its first
    "image/gif": {"GIF"},
    "image/bmp": {"BMP"},
    "image/webp": {"WEBP"},
}
"""What Pillow calls each MIME type :func:`sniff_mime` accepts."""


def _is_accepted(data: bytes, pillow_format: str | None) -> bool:
    """Whether ``data`` is in the accepted set both by its magic bytes and by what Pillow decoded it as."""
    try:
        mime = sniff_mime(data)
    except ValueError:
        return False
    return pillow_format in _PILLOW_FORMATS.get(mime, set())


_PNG_EXACT_MODES = {"1", "L", "LA", "P", "RGB", "RGBA", "I;16", "I;16B"}
"""Pillow modes PNG stores exactly."""
_PNG_SAME_VALUES = {"I;16L": "I;16", "I;16N": "I;16", "PA": "RGBA", "RGBX": "RGB"}
"""Modes PNG cannot store that convert to one it can without changing a value."""
_COLOUR_SPACES = {"CMYK", "YCbCr", "LAB", "HSV"}
_PNG_AS_SHOWN = {**{mode: "RGB" for mode in _COLOUR_SPACES}, "La": "LA", "RGBa": "RGBA"}
"""Other colour spaces and premultiplied alpha: stored as what a viewer converts them to, to show them."""


def _lossless_png(image: Image.Image) -> bytes:
    """``image`` (decoded) as PNG bytes holding the same pixel values; raises :class:`ImageCheckError` where PNG cannot.

    Pillow carries the colour profile (``icc_profile``) over, except across a colour-space conversion.
    """
    mode = image.mode
    if mode in _PNG_SAME_VALUES or mode in _PNG_AS_SHOWN:
        image = image.convert(_PNG_SAME_VALUES.get(mode) or _PNG_AS_SHOWN[mode])
        if mode in _COLOUR_SPACES:
            image.info.pop("icc_profile", None)  # it describes the source's colour space, no longer the pixels'
    elif mode == "I":
        low, high = image.getextrema()
        if low < 0 or high > 0xFFFF:
            raise ImageCheckError(f"{image.format} image has 32-bit pixel values {low}..{high}, which a PNG cannot hold")
        image = image.convert("I;16")
    elif mode not in _PNG_EXACT_MODES:
        raise ImageCheckError(f"{image.format} image has pixel mode {mode!r}, which a PNG cannot hold without changing it")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def _check_size(width: int, height: int, policy: ImagePolicy) -> None:
    if width * height > policy.max_source_pixels:
        raise ImageCheckError(f"image is {width}x{height}, over {policy.max_source_pixels} pixels")
    if min(width, height) < policy.min_side:
        raise ImageCheckError(f"image is {width}x{height}, a side is below min_side={policy.min_side}")
    if max(width, height) / min(width, height) > policy.max_aspect_ratio:
        raise ImageCheckError(f"image is {width}x{height}, aspect ratio over {policy.max_aspect_ratio:g}")


def shrunk_size(width: int, height: int, max_pixels: int, min_side: int) -> tuple[int, int]:
    """The size an image is shrunk to: aspect kept, at most ``max_pixels`` (sides never below ``min_side``)."""
    scale = math.sqrt(max_pixels / (width * height))
    new_w = max(min_side, math.floor(width * scale))
    new_h = max(min_side, math.floor(height * scale))
    return new_w, new_h


def _shrink(image: Image.Image, policy: ImagePolicy) -> bytes:
    assert policy.max_pixels is not None
    source_format = image.format
    has_alpha = image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)
    converted = image.convert("RGBA" if has_alpha else "RGB")
    resized = converted.resize(shrunk_size(image.width, image.height, policy.max_pixels, policy.min_side), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    if source_format == "JPEG" and not has_alpha:
        resized.save(buffer, format="JPEG", quality=95)
    else:
        resized.save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()
