"""What every stage works with: the config, the prompts, the role callers, the image client and the store.

Stages follow one rule: a call's :class:`~am3_verl.builder.state.CallRecord` is appended to the item
by :meth:`StageContext.chat` / :meth:`StageContext.draw`, and the stage saves the item right after it
has stored the call's result, so the record and the result reach the disk in one atomic write. A call
that fails after all retries is saved at once and raises :class:`StageFailed`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar

from pydantic import BaseModel

from am3_verl.builder.answers import response_format
from am3_verl.builder.calls import RoleCaller, request_sha
from am3_verl.builder.config import BuilderConfig
from am3_verl.builder.images_client import ImagesClient
from am3_verl.builder.prompts import Prompts
from am3_verl.builder.state import CallRecord, ItemState
from am3_verl.builder.store import CheckpointStore

T = TypeVar("T")


class StageFailed(Exception):
    """A call of ``role`` in ``stage`` failed after all its retries; the item is saved and can resume."""

    def __init__(self, stage: str, role: str, error: str) -> None:
        super().__init__(f"{stage}: {role} call failed: {error}")
        self.stage = stage
        self.role = role
        self.error = error


@dataclass
class StageContext:
    """Shared by all items of a run."""

    config: BuilderConfig
    prompts: Prompts
    callers: dict[str, RoleCaller]
    images: ImagesClient | None
    store: CheckpointStore[ItemState]
    on_call: Callable[[CallRecord], None] = field(default=lambda record: None)
    """Called for every finished call (progress display)."""

    async def save(self, item: ItemState) -> None:
        """Checkpoint ``item`` (its state now; the file write runs off the event loop, in order per seed)."""
        await self.store.save_async(item.seed_id, item)

    def blob(self, name: str) -> bytes:
        """Image bytes of a blob."""
        return self.store.read_blob(name)

    async def chat(
        self,
        item: ItemState,
        role: str,
        stage: str,
        messages: list[dict[str, Any]],
        parse: Callable[[str], T],
        schema: type[BaseModel] | None = None,
    ) -> T:
        """Call ``role``, append the call record to ``item`` and return the parsed answer.

        The caller must save ``item`` after storing the answer. On failure the item is saved (with the
        record) and :class:`StageFailed` is raised.
        """
        fmt = response_format(schema, f"am3_builder_{role}") if schema is not None and self.config.run.structured_output else None
        outcome = await self.callers[role].call(stage, messages, parse, fmt)
        item.calls.append(outcome.record)
        self.on_call(outcome.record)
        if not outcome.ok:
            await self.save(item)
            raise StageFailed(stage, role, outcome.record.error or "unknown error")
        return outcome.value  # type: ignore[return-value]

    async def draw(self, item: ItemState, stage: str, prompt: str) -> str:
        """Draw ``prompt`` with the text-to-image endpoint, store the image, append the record; returns the
        blob name. The caller saves ``item``; on failure the item is saved and :class:`StageFailed` raised."""
        if self.images is None:
            raise RuntimeError("draw() called with text-to-image disabled")
        result = await self.images.generate(prompt)
        record = CallRecord(
            role="text_to_image",
            model=self.images.model,
            stage=stage,
            ok=result.ok,
            attempts=result.attempts,
            failures=dict(result.failures),
            images=1 if result.ok else 0,
            prompt_tokens=result.usage.prompt_tokens,
            completion_tokens=result.usage.completion_tokens,
            request_sha=request_sha(self.images.model, self.images.request_body(prompt)),
            elapsed_s=round(result.elapsed_s, 4),
            error=None if result.ok else f"{result.error_kind}: {result.error}",
        )
        blob = self.store.put_blob(result.value) if result.ok and result.value is not None else None
        item.calls.append(record)
        self.on_call(record)
        if blob is None:
            await self.save(item)
            raise StageFailed(stage, "text_to_image", record.error or "unknown error")
        return blob
