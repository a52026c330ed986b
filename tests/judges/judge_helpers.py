"""Helpers for the judge tests: real PNG images and agent-loop turn records."""

from __future__ import annotations

import asyncio
import io

from PIL import Image

from am3_verl.clients.chat import ChatClient
from am3_verl.clients.endpoint import EndpointConfig
from am3_verl.dialogue import AssistantTurnRecord


def make_png(color: str = "red", size: int = 16) -> bytes:
    """A real PNG file's bytes."""
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buffer, format="PNG")
    return buffer.getvalue()


def make_records(exchanges: list[tuple[str, list[bytes], str]], *, truncated_last: bool = False) -> list[dict]:
    """``AssistantTurnRecord`` dicts (as the agent loop writes them) for (user_text, images, reply) triples."""
    records, position = [], 0
    for t, (user_text, images, reply) in enumerate(exchanges):
        span = (position + 5, position + 5 + max(1, len(reply.split())))
        position = span[1] + 10
        records.append(
            AssistantTurnRecord(
                turn=t,
                user_text=user_text,
                user_images=list(images),
                reply=reply,
                span=span,
                truncated=truncated_last and t == len(exchanges) - 1,
                empty=not reply.strip(),
            ).model_dump()
        )
    return records


def complete_once(endpoint: EndpointConfig, messages: list[dict]):
    """One chat completion through a fresh :class:`ChatClient` of ``endpoint``: ``(result, client)``."""
    client = ChatClient(endpoint)

    async def go():
        try:
            return await client.complete(messages)
        finally:
            await client.aclose()

    return asyncio.run(go()), client
