"""The perceptual hash of the clean stage: stable under re-encoding and resizing, apart for unrelated pictures."""

from __future__ import annotations

import io
import itertools
import random

import pytest
from PIL import Image

from am3_verl.testing.builder_loopback import draw_prompt
from am3_verl.builder.phash import dhash, near_duplicates
from am3_verl.data.sample import draw_image

from builder_helpers import near_copy


def _jpeg(data: bytes, quality: int = 85) -> bytes:
    buffer = io.BytesIO()
    Image.open(io.BytesIO(data)).convert("RGB").save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def test_dhash_is_deterministic_and_has_the_requested_size():
    data = draw_prompt("a street at night")
    assert dhash(data) == dhash(data) and dhash(data) - dhash(data) == 0
    assert dhash(data, 16).hash.size == 256
    with pytest.raises(ValueError):
        dhash(data, 1)


def test_near_copies_are_close_and_unrelated_pictures_are_far():
    base = draw_prompt("workshop bench")
    close = [dhash(base) - dhash(variant) for variant in (near_copy(base), _jpeg(base), _jpeg(near_copy(base), 70))]
    assert max(close) <= 6, close
    pictures = [draw_prompt(f"prompt {k}") for k in range(12)]
    far = [dhash(a) - dhash(b) for a, b in itertools.combinations(pictures, 2)]
    assert min(far) > 12, sorted(far)[:5]


def test_transparent_images_hash_against_a_white_background():
    rgba = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    rgba.paste((200, 0, 0, 255), (10, 10, 40, 40))
    flat = Image.new("RGB", (64, 64), (255, 255, 255))
    flat.paste((200, 0, 0), (10, 10, 40, 40))
    encoded = []
    for image in (rgba, flat):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        encoded.append(buffer.getvalue())
    assert dhash(encoded[0]) == dhash(encoded[1])


def test_near_duplicates_keeps_the_first_of_each_group_and_reports_the_closest():
    a = draw_image("SAFE", "box", random.Random(1))
    b = draw_prompt("something else entirely")
    images = [a, b, near_copy(a), a, near_copy(b)]
    found = near_duplicates(images, max_distance=6)
    assert [(d.index, d.duplicate_of) for d in found] == [(2, 0), (3, 0), (4, 1)]
    assert found[1].distance == 0
    assert near_duplicates(images, max_distance=-1) == []
    assert near_duplicates([], max_distance=6) == []
