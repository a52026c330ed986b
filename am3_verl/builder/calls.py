"""Metered model calls: one :class:`RoleCaller` per role, on the shared chat client.

The client (:class:`am3_verl.clients.chat.ChatClient`: bounded, retrying, results instead of exceptions)
reports the tokens every call cost, including attempts whose answer the parser then rejected. A
:class:`RoleCaller` binds a client to a role's request fields and returns, for every call, the
:class:`~am3_verl.builder.state.CallRecord` that goes into the item's checkpoint (and so into the cost
ledger). ``request_sha`` identifies a call by its model and messages; the builder's requests are
deterministic, so a resumed run can be checked to repeat no finished call.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Callable, Generic, TypeVar

from am3_verl.builder.config import BuilderConfig, BuilderError, RoleConfig
from am3_verl.builder.state import CallRecord
from am3_verl.clients.chat import ChatClient
from am3_verl.clients.images import image_data_url

T = TypeVar("T")


def request_sha(model: str, payload: Any) -> str:
    """sha256 of ``{"model", "payload"}`` as canonical JSON: the identity of a request."""
    canonical = json.dumps({"model": model, "payload": payload}, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def user_content(text: str, images: list[bytes]) -> list[dict[str, Any]] | str:
    """A user message's content: image parts (``data:`` URLs) first, then the text; plain text if no image."""
    if not images:
        return text
    parts: list[dict[str, Any]] = [{"type": "image_url", "image_url": {"url": image_data_url(data)}} for data in images]
    parts.append({"type": "text", "text": text})
    return parts


def system_and_user(system: str | None, text: str, images: list[bytes]) -> list[dict[str, Any]]:
    """``[system?, user(images + text)]``."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": user_content(text, images)})
    return messages


@dataclass
class CallOutcome(Generic[T]):
    """What a call produced and what it cost."""

    ok: bool
    value: T | None
    record: CallRecord


def endpoint_client(config: BuilderConfig, name: str) -> ChatClient:
    """A chat client for endpoint ``name``; :class:`BuilderError` when its ``api_key_env`` is not set."""
    try:
        return ChatClient(config.endpoints[name])
    except ValueError as exc:
        raise BuilderError(f"endpoints.{name}: {exc}") from None


class RoleCaller:
    """Calls one role's endpoint with the role's sampling fields and meters every call."""

    def __init__(self, role: str, client: ChatClient, config: RoleConfig) -> None:
        self.role = role
        self.client = client
        self.params = config.request_params()

    @property
    def model(self) -> str:
        """The model name requests carry."""
        return self.client.endpoint.model

    async def call(
        self,
        stage: str,
        messages: list[dict[str, Any]],
        parse: Callable[[str], T],
        response_format: dict[str, Any] | None = None,
    ) -> CallOutcome[T]:
        """One call (with the client's retries); never raises for endpoint problems."""
        params = dict(self.params)
        if response_format is not None:
            params["response_format"] = response_format
        result = await self.client.complete(messages, parse=parse, **params)
        record = CallRecord(
            role=self.role,
            model=self.model,
            stage=stage,
            ok=result.ok,
            attempts=result.attempts,
            failures=dict(result.failures),
            prompt_tokens=result.usage.prompt_tokens,
            completion_tokens=result.usage.completion_tokens,
            request_sha=request_sha(self.model, messages),
            elapsed_s=round(result.elapsed_s, 4),
            error=None if result.ok else f"{result.error_kind}: {result.error}",
        )
        return CallOutcome(result.ok, result.value if result.ok else None, record)


def role_callers(config: BuilderConfig, roles: dict[str, RoleConfig]) -> dict[str, RoleCaller]:
    """A caller per role name; roles on the same endpoint share one client (one connection pool and limit)."""
    clients: dict[str, ChatClient] = {}
    callers = {}
    for role, role_config in roles.items():
        name = role_config.endpoint
        if name not in clients:
            clients[name] = endpoint_client(config, name)
        callers[role] = RoleCaller(role, clients[name], role_config)
    return callers
