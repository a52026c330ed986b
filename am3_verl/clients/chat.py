"""A bounded, retrying OpenAI chat-completions client whose results carry failures instead of raising.

Nothing here knows about judging: the evaluation harness and the data-construction pipeline use it too.

* **One connection pool per event loop.** :class:`ChatClient` opens its ``aiohttp`` session lazily,
  once per event loop, and reuses it for every call (a verl reward worker calls many times
  concurrently on one loop); ``asyncio.run`` closes it when its loop ends. (aiohttp rather than
  httpx: with hundreds of concurrent requests httpcore's connection pool does work quadratic in its
  size per request and costs several times aiohttp's CPU per request, which made the client the
  bottleneck of the 4,096-judgment benchmark.)
* **One concurrency limit per process.** All clients with the same ``concurrency_group`` share one
  semaphore per event loop (a process normally runs one loop), held only while a request is on the
  wire, never during backoff.
* **Timeouts, retries, backoff with jitter** (tenacity's stop and wait strategies, driven by a plain
  loop: tenacity's own asyncio iteration costs about 0.2 ms per call, which dominated bursts of
  thousands of calls): every attempt has a wall-clock deadline
  (``timeout_s``); connection errors, resets, timeouts, HTTP 408/409/429/5xx, bodies that are not JSON,
  bodies without ``choices[0].message.content``, and (optionally) answers the caller's ``parse``
  rejects are retried up to ``max_attempts`` with exponential backoff plus uniform jitter (a
  ``Retry-After`` header is honoured up to ``backoff_max_s``). Other 4xx (bad request, bad key) fail
  at once.
* **Results, not exceptions.** :meth:`ChatClient.complete` returns a :class:`ChatResult` with the
  content (and parsed value), or ``ok=False`` with the last error; ``failures`` counts every failed
  attempt by kind either way.
* **Secrets.** The API key is sent only in the ``Authorization`` header; it is excluded from the
  config's repr, and redacted from error texts (a server may echo it), results and log lines.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, Generic, TypeVar

import aiohttp
from tenacity import RetryCallState, stop_after_attempt, wait_exponential_jitter

logger = logging.getLogger(__name__)

T = TypeVar("T")

FAILURE_KINDS: tuple[str, ...] = (
    "timeout",
    "connect",
    "network",
    "http_429",
    "http_5xx",
    "http_4xx",
    "invalid_json",
    "bad_response",
    "parse",
)
"""Kinds of failed attempts counted in :attr:`ChatResult.failures`."""

RETRYABLE_STATUS = frozenset({408, 409, 429})


@dataclass(frozen=True)
class ChatClientConfig:
    """Where and how to call an OpenAI-compatible ``/chat/completions`` endpoint."""

    base_url: str
    """Endpoint root including ``/v1``, e.g. ``http://judge-host:8000/v1``."""
    model: str
    """Model name sent in every request."""
    api_key: str | None = field(default=None, repr=False)
    """Bearer token; take it from the environment, never from a config file. Never logged."""
    timeout_s: float = 120.0
    """Wall-clock limit of one attempt (connect + send + wait + read)."""
    connect_timeout_s: float = 10.0
    max_attempts: int = 4
    """Attempts per call, the first included."""
    backoff_initial_s: float = 0.5
    """First backoff; doubles per retry up to ``backoff_max_s``, plus uniform jitter in [0, this)."""
    backoff_max_s: float = 10.0
    max_concurrency: int = 256
    """Requests on the wire at once, shared by every client of ``concurrency_group`` in this process."""
    concurrency_group: str = "default"
    retry_parse_errors: bool = True
    """Retry when the caller's ``parse`` rejects the answer (a sampling judge may answer well next time)."""

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"ChatClientConfig.base_url must start with http:// or https://, got {self.base_url!r}")
        if not self.model:
            raise ValueError("ChatClientConfig.model is empty")
        for name in ("timeout_s", "connect_timeout_s", "backoff_max_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"ChatClientConfig.{name} must be > 0, got {getattr(self, name)!r}")
        if self.backoff_initial_s < 0:
            raise ValueError(f"ChatClientConfig.backoff_initial_s must be >= 0, got {self.backoff_initial_s!r}")
        if self.max_attempts < 1:
            raise ValueError(f"ChatClientConfig.max_attempts must be >= 1, got {self.max_attempts!r}")
        if self.max_concurrency < 1:
            raise ValueError(f"ChatClientConfig.max_concurrency must be >= 1, got {self.max_concurrency!r}")


@dataclass
class ChatResult(Generic[T]):
    """The outcome of one :meth:`ChatClient.complete` call (all attempts together)."""

    ok: bool
    content: str | None = None
    """The assistant content of the successful attempt."""
    value: T | None = None
    """``parse(content)`` when a parser was given."""
    error: str | None = None
    """Why the last attempt failed (None when ``ok``)."""
    error_kind: str | None = None
    attempts: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    """Failed attempts by kind (also on success, when earlier attempts failed)."""
    elapsed_s: float = 0.0


class _AttemptError(Exception):
    def __init__(self, kind: str, message: str, retryable: bool, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.retryable = retryable
        self.retry_after = retry_after


def secret_encodings(secret: str) -> set[str]:
    """The forms in which ``secret`` can come back from a server: raw, JSON-escaped, URL-encoded (both styles)."""
    from urllib.parse import quote, quote_plus

    return {form for form in (secret, json.dumps(secret)[1:-1], quote(secret, safe=""), quote_plus(secret)) if form}


def redact(text: str, secret: str | None) -> str:
    """``text`` with every encoding of ``secret`` (:func:`secret_encodings`) replaced by ``***``."""
    if not secret or not text:
        return text
    for form in sorted(secret_encodings(secret), key=len, reverse=True):
        text = text.replace(form, "***")
    return text


def _fail(kind: str, message: str, retryable: bool, retry_after: float | None = None) -> _AttemptError:
    return _AttemptError(kind, message, retryable, retry_after)


# One semaphore per (event loop, concurrency group): the per-process limit.
_SEMAPHORES: dict[asyncio.AbstractEventLoop, dict[str, tuple[int, asyncio.Semaphore]]] = {}


def per_loop(table: dict, loop: asyncio.AbstractEventLoop, make: Callable[[], Any]) -> Any:
    """``table[loop]``, created by ``make()`` on first use; entries of closed loops are dropped then.

    (Per-loop asyncio objects reference their loop, so a weak-keyed table would never let go of it.)"""
    value = table.get(loop)
    if value is None:
        for old in [key for key in table if key.is_closed()]:
            del table[old]
        value = table[loop] = make()
    return value


def process_semaphore(group: str, limit: int) -> asyncio.Semaphore:
    """The running loop's shared semaphore for ``group``; raises if it exists with another limit."""
    groups = per_loop(_SEMAPHORES, asyncio.get_running_loop(), dict)
    if group not in groups:
        groups[group] = (limit, asyncio.Semaphore(limit))
    existing_limit, semaphore = groups[group]
    if existing_limit != limit:
        raise ValueError(
            f"concurrency group {group!r} already has limit {existing_limit} in this process; "
            f"a client asked for {limit}. Use the same max_concurrency or another concurrency_group."
        )
    return semaphore


class ChatClient:
    """A retrying chat-completions client for one endpoint; safe to share across concurrent tasks."""

    def __init__(self, config: ChatClientConfig) -> None:
        self.config = config
        self._sessions: dict[asyncio.AbstractEventLoop, tuple[aiohttp.ClientSession, AsyncIterator]] = {}
        self._url = config.base_url.rstrip("/") + "/chat/completions"
        self._backoff = wait_exponential_jitter(
            multiplier=config.backoff_initial_s, max=config.backoff_max_s, jitter=config.backoff_initial_s
        )
        self._stop = stop_after_attempt(config.max_attempts)

    def __repr__(self) -> str:
        return f"ChatClient({self.config!r})"

    async def _session(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        entry = self._sessions.get(loop)
        if entry is not None and not entry[0].closed:
            return entry[0]
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.config.max_concurrency + 8, limit_per_host=0),
            headers=self._headers(),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.config.connect_timeout_s),
        )
        closer = _close_at_loop_shutdown(session)
        await closer.__anext__()
        self._sessions.pop(loop, None)
        per_loop(self._sessions, loop, lambda: (session, closer))
        return session

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.config.api_key:
            headers["Authorization"] = f"Bearer {self.config.api_key}"
        return headers

    async def aclose(self) -> None:
        """Close this loop's connection pool (a later call opens a new one)."""
        entry = self._sessions.pop(asyncio.get_running_loop(), None)
        if entry is not None:
            await entry[0].close()

    def _wait(self, state: RetryCallState) -> float:
        base = self._backoff(state)
        exc = state.outcome.exception() if state.outcome else None
        retry_after = getattr(exc, "retry_after", None)
        if retry_after:
            base = max(base, min(retry_after, self.config.backoff_max_s))
        return base

    async def complete(
        self,
        messages: list[dict[str, Any]] | Callable[[], list[dict[str, Any]]],
        *,
        parse: Callable[[str], T] | None = None,
        **params: Any,
    ) -> ChatResult[T]:
        """Send one chat completion (retrying as configured) and return a :class:`ChatResult`; never raises
        for transport, protocol or parse problems. ``params`` go into the request body (``temperature``,
        ``max_tokens``, ``response_format``, ...).

        ``messages`` may be a zero-argument callable: it is then called once, when the first attempt
        gets its concurrency slot, so thousands of queued calls do not all build (and hold) their
        request bodies up front. ``parse`` rejects an answer by raising ``ValueError`` (pydantic's
        ``ValidationError`` is one); that counts as a ``parse`` failure."""
        payload: list[bytes] = []

        def body() -> bytes:
            if not payload:
                built = messages() if callable(messages) else messages
                request = {"model": self.config.model, "messages": built, **params}
                payload.append(json.dumps(request, ensure_ascii=False).encode("utf-8"))
            return payload[0]

        failures: Counter[str] = Counter()
        attempts = 0
        state: RetryCallState | None = None
        start = time.perf_counter()
        while True:
            attempts += 1
            try:
                content = redact(await self._attempt(body), self.config.api_key)  # an endpoint may echo the key
                value = parse(content) if parse is not None else None
                return ChatResult(True, content, value, None, None, attempts, dict(failures), time.perf_counter() - start)
            except _AttemptError as exc:
                error = exc
            except ValueError as exc:  # the caller's parser rejected the answer
                error = _fail("parse", str(exc), self.config.retry_parse_errors)
            if self.config.api_key and redact(str(error), self.config.api_key) != str(error):  # a server that echoes the key
                error = _fail(error.kind, redact(str(error), self.config.api_key), error.retryable, error.retry_after)
            failures[error.kind] += 1
            logger.debug("chat attempt %d to %s failed (%s): %s", attempts, self._url, error.kind, error)
            if state is None:
                state = RetryCallState(None, None, (), {})  # only tenacity's stop/wait strategies read it
            state.attempt_number = attempts
            state.set_exception((type(error), error, None))
            if not error.retryable or self._stop(state):
                logger.warning(
                    "chat request to %s failed after %d attempt(s): %s: %s", self._url, attempts, error.kind, str(error)[:300]
                )
                return ChatResult(False, None, None, str(error), error.kind, attempts, dict(failures), time.perf_counter() - start)
            await asyncio.sleep(self._wait(state))

    async def _attempt(self, body: Callable[[], bytes]) -> str:
        session = await self._session()
        semaphore = process_semaphore(self.config.concurrency_group, self.config.max_concurrency)
        async with semaphore:
            try:
                status, text, retry_after = await self._post(session, body())
            except asyncio.TimeoutError:  # aiohttp's timeouts subclass it; checked before ClientError
                raise _fail("timeout", f"no answer within {self.config.timeout_s:g} s", True) from None
            except aiohttp.ClientConnectorError as exc:
                raise _fail("connect", f"cannot connect: {exc}", True) from None
            except aiohttp.ClientError as exc:  # resets, EOF mid-response, malformed HTTP
                raise _fail("network", f"{type(exc).__name__}: {exc}", True) from None
            except OSError as exc:
                raise _fail("network", f"{type(exc).__name__}: {exc}", True) from None
        return _content_of(status, text, retry_after)

    async def _post(self, session: aiohttp.ClientSession, payload: bytes) -> tuple[int, str, float | None]:
        timeout = aiohttp.ClientTimeout(total=self.config.timeout_s, sock_connect=self.config.connect_timeout_s)
        async with session.post(self._url, data=payload, timeout=timeout) as response:
            raw = await response.read()
            return response.status, raw.decode("utf-8", "replace"), _retry_after(response.headers.get("Retry-After"))


async def _close_at_loop_shutdown(session: aiohttp.ClientSession) -> AsyncIterator[None]:
    """An async generator whose finaliser closes ``session``: ``asyncio.run`` finalises every live async
    generator before closing its loop (``loop.shutdown_asyncgens``), so sessions never outlive their loop."""
    try:
        yield
        yield  # never resumed: the generator stays suspended until the loop finalises it
    finally:
        if not session.closed:
            await session.close()


def _content_of(status: int, text: str, retry_after: float | None) -> str:
    if status >= 400:
        detail = text[:300]
        if status >= 500:
            raise _fail("http_5xx", f"HTTP {status}: {detail}", True, retry_after)
        if status == 429:
            raise _fail("http_429", f"HTTP 429: {detail}", True, retry_after)
        raise _fail("http_4xx", f"HTTP {status}: {detail}", status in RETRYABLE_STATUS, retry_after)
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        raise _fail("invalid_json", f"response body is not JSON: {text[:200]!r}", True) from None
    try:
        content = data["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise _fail("bad_response", f"response has no choices[0].message.content: {str(data)[:200]}", True) from None
    if not isinstance(content, str):
        raise _fail("bad_response", f"choices[0].message.content is {type(content).__name__}, not a string", True)
    return content


def _retry_after(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
