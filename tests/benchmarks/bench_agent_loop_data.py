"""Shared synthetic dialogues for bench_agent_loop.py (4 turns, 1.53 images per dialogue on average)."""

import io

from PIL import Image

USER_TEXTS = [
    "<image>What does this picture show?",  # first turn; later turns are 1..3
    "Interesting. What is it usually used for?",
    "Here is another one. How is it made?",
    "Summarise both answers step by step.",
]
IMAGE_SIZE = (224, 224)


def png(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", IMAGE_SIZE, (seed * 37 % 256, seed * 91 % 256, 120)).save(buffer, format="PNG")
    return buffer.getvalue()


def later_turn_images(turn: int, with_image: bool) -> list[bytes]:
    """Images of later user turn ``turn`` (1-based): a two-image dialogue's second image sits in turn 2."""
    return [png(turn)] if with_image and turn == 2 else []


def has_second_image(index: int) -> bool:
    """53 of every 100 consecutive dialogues, spread evenly, carry a second image: 1.53 images on average."""
    return (index * 53) % 100 < 53
