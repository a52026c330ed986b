"""Images and SFT/RL rows for the LLaVA-NeXT tests, chosen so that images tile into different crop counts."""

from __future__ import annotations

import io

from PIL import Image

SMALL, SQUARE, WIDE, TALL = (20, 20), (64, 64), (96, 40), (30, 90)
"""Sizes whose best any-resolution pinpoint (tiny model: 28 px crops up to 56x56) differs."""


def png(color: tuple[int, int, int], size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def image(color: tuple[int, int, int], size: tuple[int, int]) -> Image.Image:
    return Image.new("RGB", size, color)


def sft_rows(count: int) -> list[dict]:
    """Two image turns per dialogue; turn images and dialogues cycle through the four sizes."""
    sizes = [SMALL, SQUARE, WIDE, TALL]
    return [
        {
            "messages": [
                {"role": "user", "content": "<image>What is in this picture?"},
                {"role": "assistant", "content": "A coloured square."},
                {"role": "user", "content": "And here? <image> How could it be misused?"},
                {"role": "assistant", "content": "I'm sorry, I can't help with that."},
            ],
            "images": [{"bytes": png((20 * i, 100, 200), sizes[i % 4])}, {"bytes": png((200, 20 * i, 50), sizes[(i + 1) % 4])}],
        }
        for i in range(count)
    ]
