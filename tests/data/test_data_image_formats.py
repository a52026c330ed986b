"""One accepted image set everywhere: whatever Pillow decodes goes in, but the parquet only ever holds
PNG, JPEG, GIF, BMP or WebP bytes (what ``am3_verl.clients.images.sniff_mime`` accepts and the judges
send on). Other formats (TIFF, PPM, ICO, TGA, ...) are re-encoded as lossless PNG; accepted ones are
stored byte for byte."""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from am3_verl.clients.images import sniff_mime
from am3_verl.data.images import ImageCheckError, ImagePolicy, prepare_image
from am3_verl.judges.base import turns_from_records

from data_helpers import CONVERTERS

CONVERTED = ["TIFF", "PPM", "ICO", "TGA"]
KEPT = ["PNG", "JPEG", "GIF", "BMP", "WEBP"]
IMAGE_COLUMN = {"intersafe_v": "images", "safemt": "images", "cold_start": "images"}


def _pattern(mode: str = "RGB", size: tuple[int, int] = (64, 48)) -> Image.Image:
    """A small image with varied pixels (a lossy re-encode would change some)."""
    rng = np.random.default_rng(0)
    channels = len(mode)
    array = rng.integers(0, 256, size=(size[1], size[0], channels), dtype=np.uint8)
    return Image.fromarray(array[..., 0] if channels == 1 else array, mode)


def _encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **({"sizes": [image.size]} if fmt == "ICO" else {}))
    return buffer.getvalue()


def _pixels(data: bytes) -> tuple[str, tuple[int, int], bytes]:
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return image.mode, image.size, image.tobytes()


@pytest.mark.parametrize("converter", sorted(CONVERTERS))
@pytest.mark.parametrize("fmt", CONVERTED)
def test_other_formats_reach_the_parquet_as_lossless_png_the_judges_accept(tmp_path, converter, fmt):
    case = CONVERTERS[converter]
    source_bytes = _encoded(_pattern("RGBA" if fmt == "ICO" else "RGB"), fmt)
    with pytest.raises(ValueError):
        sniff_mime(source_bytes)  # what the reward would have raised on mid-training
    name = f"img.{fmt.lower()}"
    (tmp_path / name).write_bytes(source_bytes)
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps(case.record("r0", image=name)) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    counts = case.run(source, out)
    assert counts.rejected == 0 and sum(counts.written.values()) == 1
    (row,) = pq.read_table(out / case.output, columns=[IMAGE_COLUMN[converter]]).to_pylist()
    (stored,) = [image["bytes"] for image in row[IMAGE_COLUMN[converter]]]
    assert sniff_mime(stored) == "image/png"
    assert _pixels(stored) == _pixels(source_bytes)  # lossless: the policy decodes the same pixels as before
    record = {"turn": 0, "user_text": "<image> What is this?", "user_images": [stored], "reply": "A picture.", "span": [0, 3]}
    (turn,) = turns_from_records([record])  # the judges' own check on a turn's images
    assert turn.user_images == (stored,)


@pytest.mark.parametrize("fmt", KEPT)
def test_accepted_formats_are_stored_byte_for_byte(fmt):
    data = _encoded(_pattern(), fmt)
    stored, resized = prepare_image(data, ImagePolicy())
    assert stored == data and not resized
    sniff_mime(stored)


@pytest.mark.parametrize(
    "mode, expected_mode",
    [("L", "L"), ("LA", "LA"), ("P", "P"), ("1", "1"), ("I;16", "I;16"), ("CMYK", "RGB"), ("RGBA", "RGBA")],
)
def test_tiff_modes_become_png_without_losing_what_png_can_hold(mode, expected_mode):
    if mode in ("P", "1", "I;16", "CMYK", "LA"):
        image = _pattern("RGB").convert("L" if mode in ("1", "I;16", "LA") else "RGB").convert(mode)
    else:
        image = _pattern(mode)
    data = _encoded(image, "TIFF")
    stored, _ = prepare_image(data, ImagePolicy())
    assert sniff_mime(stored) == "image/png"
    with Image.open(io.BytesIO(stored)) as png, Image.open(io.BytesIO(data)) as tiff:
        assert png.size == tiff.size
        if expected_mode == mode:
            assert png.mode == mode and png.tobytes() == tiff.tobytes()
        else:
            assert png.mode == expected_mode and png.tobytes() == tiff.convert(expected_mode).tobytes()


def test_floating_point_pixels_that_png_cannot_hold_are_refused():
    image = Image.fromarray(np.linspace(0.0, 1.5, 64 * 48, dtype=np.float32).reshape(48, 64), "F")
    with pytest.raises(ImageCheckError, match="PNG"):
        prepare_image(_encoded(image, "TIFF"), ImagePolicy())


def test_a_shrunk_image_is_png_or_jpeg_whatever_its_source():
    stored, resized = prepare_image(_encoded(_pattern(size=(200, 100)), "TIFF"), ImagePolicy(max_pixels=50 * 50))
    assert resized and sniff_mime(stored) == "image/png"


def test_a_colour_profile_is_kept_unless_the_colour_space_changes():
    from PIL import ImageCms

    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    for mode, kept in (("RGB", True), ("CMYK", False)):
        buffer = io.BytesIO()
        Image.new(mode, (40, 40)).save(buffer, format="TIFF", icc_profile=srgb)
        stored, _ = prepare_image(buffer.getvalue(), ImagePolicy())
        with Image.open(io.BytesIO(stored)) as png:
            assert (png.info.get("icc_profile") == srgb) is kept, mode
