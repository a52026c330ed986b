"""The OpenAI chat-completions client every component uses (judges, guards, the simulated user, evaluation,
the data builder), on the shared :class:`~am3_verl.clients.transport.Transport`.

Nothing here knows about judging. Results carry failures instead of raising, and the tokens used.
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable, TypeVar

from am3_verl.clients.endpoint import EndpointConfig
from am3_verl.clients.transport import Failure, Result, Transport

T = TypeVar("T")

ChatResult = Result
"""The outcome of :meth:`ChatClient.complete`: ``content`` is the assistant text, ``value`` the parsed one."""


class ChatClient:
    """A retrying chat-completions client for one endpoint; safe to share across concurrent tasks."""

    def __init__(
        self, endpoint: EndpointConfig, *, retry_parse_errors: bool = True, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    ) -> None:
        """``retry_parse_errors``: retry when ``parse`` rejects an answer (a sampling judge may answer well next time).
        ``sleep`` waits between attempts (tests pass a recorder instead of waiting)."""
        self.endpoint = endpoint
        self.transport = Transport(endpoint, "/chat/completions", retry_rejected=retry_parse_errors, sleep=sleep)

    def __repr__(self) -> str:
        return f"ChatClient({self.endpoint!r})"

    async def complete(
        self,
        messages: list[dict[str, Any]] | Callable[[], list[dict[str, Any]]],
        *,
        parse: Callable[[str], T] | None = None,
        **params: Any,
    ) -> Result[T]:
        """Send one chat completion (retrying as configured); never raises for transport, protocol or parse
        problems. ``params`` go into the request body (``temperature``, ``max_tokens``, ``response_format``...).

        ``messages`` may be a zero-argument callable: it is then called once, when the first attempt gets
        its concurrency slot, so thousands of queued calls do not all build (and hold) their request bodies
        up front. ``parse`` rejects an answer by raising ``ValueError`` (pydantic's ``ValidationError`` is
        one); that counts as a ``parse`` failure."""

        def body() -> dict[str, Any]:
            return {"model": self.endpoint.model, "messages": messages() if callable(messages) else messages, **params}

        def read(answer: dict[str, Any]) -> tuple[T | None, str]:
            content = _content_of(answer)
            return (parse(content) if parse is not None else None), content

        return await self.transport.call(body, read)

    async def aclose(self) -> None:
        """Close this loop's connection pool (a later call opens a new one)."""
        await self.transport.aclose()


def _content_of(answer: dict[str, Any]) -> str:
    try:
        content = answer["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise Failure("bad_response", f"response has no choices[0].message.content: {str(answer)[:200]}") from None
    if not isinstance(content, str):
        raise Failure("bad_response", f"choices[0].message.content is {type(content).__name__}, not a string")
    return content
