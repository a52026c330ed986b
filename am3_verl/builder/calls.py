"""Metered model calls: the shared chat client plus token accounting, one :class:`RoleCaller` per role.

:class:`MeteredChatClient` is :class:`am3_verl.clients.chat.ChatClient` (bounded, retrying, results
instead of exceptions) with one addition: it reads the ``usage`` object of every answered attempt, so
each call reports the tokens it cost, including attempts whose answer was then rejected by the parser.

A :class:`RoleCaller` binds a client to a role's request fields and returns, for every call, the
:class:`~am3_verl.builder.state.CallRecord` that goes into the item's checkpoint (and so into the cost
ledger). ``request_sha`` identifies a call by its model and messages; the builder's requests are
deterministic, so a resumed run can be checked to repeat no finished call.
"""

from __future__ import annotations

import contextvars
import hashlib
import json
from dataclasses import dataclass
from typing import Any, Callable, Generic, TypeVar

import aiohttp

from am3_verl.builder.config import BuilderConfig, EndpointConfig, RoleConfig, api_key_from_env
from am3_verl.builder.state import CallRecord
from am3_verl.clients.chat import ChatClient, ChatClientConfig, ChatResult
from am3_verl.clients.images import image_data_url

T = TypeVar("T")

_USAGE_SINK: contextvars.ContextVar[list[dict[str, int]] | None] = contextvars.ContextVar("am3_builder_usage", default=None)


def _usage_of(text: str) -> dict[str, int]:
    try:
        usage = json.loads(text).get("usage") or {}
    except (ValueError, AttributeError):
        return {}
    out = {}
    for name in ("prompt_tokens", "completion_tokens"):
        value = usage.get(name) if isinstance(usage, dict) else None
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            out[name] = value
    return out


class MeteredChatClient(ChatClient):
    """A :class:`ChatClient` whose :meth:`complete_metered` also returns the summed token usage."""

    async def _post(self, session: aiohttp.ClientSession, payload: bytes) -> tuple[int, str, float | None]:
        status, text, retry_after = await super()._post(session, payload)
        sink = _USAGE_SINK.get()
        if sink is not None and status < 400:
            sink.append(_usage_of(text))
        return status, text, retry_after

    async def complete_metered(
        self, messages: list[dict[str, Any]], *, parse: Callable[[str], T] | None = None, **params: Any
    ) -> tuple[ChatResult[T], dict[str, int]]:
        """:meth:`ChatClient.complete` plus ``{"prompt_tokens", "completion_tokens"}`` summed over the
        attempts that got an answer (0 where the server reports no usage)."""
        sink: list[dict[str, int]] = []
        token = _USAGE_SINK.set(sink)
        try:
            result = await self.complete(messages, parse=parse, **params)
        finally:
            _USAGE_SINK.reset(token)
        return result, {
            "prompt_tokens": sum(u.get("prompt_tokens", 0) for u in sink),
            "completion_tokens": sum(u.get("completion_tokens", 0) for u in sink),
        }


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


def endpoint_client(name: str, endpoint: EndpointConfig) -> MeteredChatClient:
    """A client for endpoint ``name`` (API key from its ``api_key_env``)."""
    return MeteredChatClient(
        ChatClientConfig(
            base_url=endpoint.base_url,
            model=endpoint.model,
            api_key=api_key_from_env(endpoint.api_key_env, f"endpoints.{name}"),
            timeout_s=endpoint.timeout_s,
            max_attempts=endpoint.max_attempts,
            backoff_initial_s=endpoint.backoff_initial_s,
            backoff_max_s=endpoint.backoff_max_s,
            max_concurrency=endpoint.max_concurrency,
            concurrency_group=f"am3-builder:{name}:{endpoint.max_concurrency}",
        )
    )


class RoleCaller:
    """Calls one role's endpoint with the role's sampling fields and meters every call."""

    def __init__(self, role: str, client: MeteredChatClient, config: RoleConfig) -> None:
        self.role = role
        self.client = client
        self.params = config.request_params()

    @property
    def model(self) -> str:
        """The model name requests carry."""
        return self.client.config.model

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
        result, usage = await self.client.complete_metered(messages, parse=parse, **params)
        record = CallRecord(
            role=self.role,
            model=self.model,
            stage=stage,
            ok=result.ok,
            attempts=result.attempts,
            failures=dict(result.failures),
            prompt_tokens=usage["prompt_tokens"],
            completion_tokens=usage["completion_tokens"],
            request_sha=request_sha(self.model, messages),
            elapsed_s=round(result.elapsed_s, 4),
            error=None if result.ok else f"{result.error_kind}: {result.error}",
        )
        return CallOutcome(result.ok, result.value if result.ok else None, record)


def role_callers(config: BuilderConfig, roles: dict[str, RoleConfig]) -> dict[str, RoleCaller]:
    """A caller per role name; roles on the same endpoint share one client (one connection pool and limit)."""
    clients: dict[str, MeteredChatClient] = {}
    callers = {}
    for role, role_config in roles.items():
        name = role_config.endpoint
        if name not in clients:
            clients[name] = endpoint_client(name, config.endpoints[name])
        callers[role] = RoleCaller(role, clients[name], role_config)
    return callers
