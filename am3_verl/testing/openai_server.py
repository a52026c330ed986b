"""A loopback OpenAI-compatible chat server for tests and benchmarks, with scripted faults.

:class:`LoopbackOpenAIServer` is a real HTTP server (aiohttp) on ``127.0.0.1`` at a free port, run
on its own event loop in a background thread, started and stopped in-process as a context manager::

    with LoopbackOpenAIServer(responder=RuleJudgeResponder(), faults=FaultPlan(latency_s=0.2)) as server:
        client = httpx.Client(base_url=server.base_url)   # http://127.0.0.1:<port>/v1
        client.post("/chat/completions", json={"model": server.model, "messages": [...]})

It speaks ``POST /v1/chat/completions`` (non-streaming; ``image_url`` parts with ``data:`` URLs are
checked to be valid base64) and ``GET /v1/models``. The assistant content of every reply comes from
``responder(request_json) -> str`` (sync or async), so the same server plays a judge
(:class:`RuleJudgeResponder`, :class:`RuleLlamaGuardResponder`, :class:`RuleQwen3GuardResponder`), a
simulated user, or a model under evaluation.

Faults are chosen per request, in arrival order, by a :class:`FaultPlan`: a seeded random draw over
per-kind probabilities, optionally overridden by a schedule (a list indexed by request number, or a
callable of ``(index, request_json)``). Kinds (:data:`FAULT_KINDS`):

* ``latency`` – answer normally after ``added_latency_s`` extra seconds;
* ``timeout`` – hang for ``hang_s`` seconds (longer than any sane client timeout), then close;
* ``http_500`` / ``http_429`` – an OpenAI-style error body with that status;
* ``reset`` – abort the TCP connection with RST before any response byte;
* ``invalid_json`` – status 200, ``application/json``, a truncated JSON body;
* ``no_choices`` – status 200, valid JSON without ``choices``.

Two more misbehaviours of real deployments: ``FaultPlan.error_body`` makes the error answers echo the
request's headers (servers that quote the presented key back, in their own encoding), and
``FaultPlan.redirect`` answers requests with a redirect (a proxy that sends clients elsewhere).

Every request also waits ``latency_s`` (+ uniform jitter) first; waits are ``asyncio.sleep``, so
hundreds of concurrent slow requests cost no threads. :meth:`LoopbackOpenAIServer.stats` counts
requests (total, served, per fault kind, peak in flight, rejected) and
:meth:`LoopbackOpenAIServer.last_requests` returns the most recent request bodies for assertions.
An ``api_key`` makes the server demand ``Authorization: Bearer <key>`` (401 otherwise); the key is
never recorded.

:class:`LoopbackOpenAIServerProcess` runs the same server in a child process with the same methods,
for benchmarks where the server must not compete with the measured client for the interpreter lock.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import json
import pickle
import random
import re
import socket
import struct
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Mapping, Sequence, Union

from aiohttp import web

from am3_verl.clients.images import decode_data_url
from am3_verl.judges.format import NONCE_HEX_CHARS

FAULT_KINDS: tuple[str, ...] = ("latency", "timeout", "http_500", "http_429", "reset", "invalid_json", "no_choices")
"""Every fault the server can inject; ``"ok"`` in a schedule means "serve normally"."""

Responder = Callable[[dict], Union[str, Awaitable[str]]]
Schedule = Union[Sequence[Union[str, None]], Callable[[int, dict], Union[str, None]]]
Redirect = Callable[[int, Any], Union[tuple[int, str], None]]


@dataclass
class FaultPlan:
    """Which requests fail and how. Probabilities are per request and must sum to at most 1."""

    latency_s: float = 0.0
    """Base delay before every answer (faulty or not)."""
    latency_jitter_s: float = 0.0
    """Extra uniform delay in ``[0, latency_jitter_s)`` added to ``latency_s``."""
    p_latency: float = 0.0
    """Probability of the ``latency`` fault (answer after ``added_latency_s`` more)."""
    added_latency_s: float = 1.0
    p_timeout: float = 0.0
    """Probability of the ``timeout`` fault (hang ``hang_s`` seconds, then drop the connection)."""
    hang_s: float = 3600.0
    p_http_500: float = 0.0
    p_http_429: float = 0.0
    retry_after_s: float | None = None
    """If set, ``http_429`` answers carry ``Retry-After: <retry_after_s>``."""
    p_reset: float = 0.0
    p_invalid_json: float = 0.0
    p_no_choices: float = 0.0
    schedule: Schedule | None = None
    """Per-request override: ``schedule[i]`` (list) or ``schedule(i, request_json)`` (callable) gives a
    fault kind, ``"ok"`` for no fault, or None to fall back to the probabilities. ``i`` counts chat
    completion requests from 0 in arrival order."""
    seed: int = 0
    """Seed of the random draw, so a run's fault sequence (by arrival order) is reproducible."""
    error_body: Callable[[Mapping[str, str]], str] | None = None
    """If set, the raw body (served as ``application/json``, written as given) of ``http_500`` and
    ``http_429`` answers, made from the request's headers: a server that echoes the ``Authorization`` it
    was shown. Default: an OpenAI-style error object."""
    redirect: Redirect | None = None
    """If set, ``redirect(i, request_json)`` may give ``(status, location)``: request ``i`` is then answered
    with that redirect (``Location: location``) instead of a completion or a fault, after the key check.
    None for a request answers it as usual."""

    def __post_init__(self) -> None:
        total = sum(self.probabilities().values())
        if total > 1.0 + 1e-9:
            raise ValueError(f"FaultPlan probabilities sum to {total:.3f} > 1")
        for kind, p in self.probabilities().items():
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"FaultPlan.p_{kind} = {p!r} is not a probability")
        if isinstance(self.schedule, (list, tuple)):
            for i, kind in enumerate(self.schedule):
                _check_kind(kind, f"FaultPlan.schedule[{i}]")

    def probabilities(self) -> dict[str, float]:
        """Fault kind -> probability."""
        return {kind: getattr(self, f"p_{kind}") for kind in FAULT_KINDS}


def _check_kind(kind: str | None, where: str) -> None:
    if kind is not None and kind != "ok" and kind not in FAULT_KINDS:
        raise ValueError(f"{where} = {kind!r}; expected one of ok, {', '.join(FAULT_KINDS)} or None")


@dataclass(frozen=True)
class RecordedRequest:
    """One chat-completion request as the server saw it (the API key is never kept)."""

    index: int
    fault: str
    """``"ok"``, the fault kind injected, ``"redirect"`` (answered with a redirect), or ``"rejected"`` (bad
    key or invalid body: no fault applied)."""
    body: Any
    """The parsed JSON body (or the raw text if it was not JSON)."""
    authorized: bool
    num_images: int
    received_at: float = 0.0
    """``time.time()`` when the body had been read."""


@dataclass
class ServerStats:
    """Request counters; ``total == served + sum(faults.values()) + rejected + redirected`` once requests finish.

    ``served`` counts normal answers (a ``latency`` fault is counted under ``faults`` only)."""

    total: int = 0
    served: int = 0
    faults: dict[str, int] = field(default_factory=lambda: {kind: 0 for kind in FAULT_KINDS})
    rejected: int = 0
    """400 (bad body or image), 401 (missing/wrong key) and responder errors (500)."""
    responder_errors: int = 0
    redirected: int = 0
    """Requests answered with a :attr:`FaultPlan.redirect`."""
    in_flight: int = 0
    max_in_flight: int = 0
    models_requests: int = 0


class LoopbackOpenAIServer:
    """An OpenAI-compatible chat server on 127.0.0.1 in a background thread; see the module docstring."""

    def __init__(
        self,
        responder: Responder,
        faults: FaultPlan | None = None,
        *,
        model: str = "loopback-model",
        api_key: str | None = None,
        record_last: int = 256,
        host: str = "127.0.0.1",
        port: int = 0,
        backlog: int = 4096,
    ) -> None:
        self.model = model
        self.host = host
        self._port = port
        self._backlog = backlog
        self._api_key = api_key
        self._responder = responder
        self._faults = faults or FaultPlan()
        self._rng = random.Random(self._faults.seed)
        self._lock = threading.Lock()
        self._stats = ServerStats()
        self._recent: collections.deque[RecordedRequest] = collections.deque(maxlen=record_last)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._hanging: set[asyncio.Task] = set()

    # ------------------------------------------------------------------ lifecycle
    @property
    def port(self) -> int:
        """The bound port (valid after :meth:`start`)."""
        if self._runner is None:
            raise RuntimeError("LoopbackOpenAIServer is not running")
        return self._port

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>/v1``: what an OpenAI client takes as its base URL."""
        return f"http://{self.host}:{self.port}/v1"

    def start(self) -> "LoopbackOpenAIServer":
        """Bind a port and serve in a background thread; returns self once requests are accepted."""
        if self._thread is not None:
            raise RuntimeError("LoopbackOpenAIServer already started")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="loopback-openai-server", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=30)
        return self

    def stop(self) -> None:
        """Stop serving (hanging requests are dropped) and join the thread; safe to call twice."""
        if self._thread is None or self._loop is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=30)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)
            self._loop.close()
            self._thread = None
            self._loop = None
            self._runner = None

    def __enter__(self) -> "LoopbackOpenAIServer":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    async def _start(self) -> None:
        app = web.Application(client_max_size=256 * 1024**2)
        app.router.add_post("/v1/chat/completions", self._handle_chat)
        app.router.add_get("/v1/models", self._handle_models)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self._port, backlog=self._backlog)
        await site.start()
        self._port = site._server.sockets[0].getsockname()[1]  # the port the OS picked for port=0

    async def _stop(self) -> None:
        for task in list(self._hanging):
            task.cancel()
        if self._runner is not None:
            await self._runner.cleanup()

    # ------------------------------------------------------------------ configuration and introspection
    def set_responder(self, responder: Responder) -> None:
        """Replace the reply policy for later requests."""
        with self._lock:
            self._responder = responder

    def set_faults(self, faults: FaultPlan) -> None:
        """Replace the fault plan (and reseed its random draw) for later requests; request numbering goes on."""
        with self._lock:
            self._faults = faults
            self._rng = random.Random(faults.seed)

    def stats(self) -> ServerStats:
        """A snapshot copy of the counters."""
        with self._lock:
            s = self._stats
            return ServerStats(
                total=s.total,
                served=s.served,
                faults=dict(s.faults),
                rejected=s.rejected,
                responder_errors=s.responder_errors,
                redirected=s.redirected,
                in_flight=s.in_flight,
                max_in_flight=s.max_in_flight,
                models_requests=s.models_requests,
            )

    def reset_stats(self) -> None:
        """Zero the counters and forget recorded requests (request numbering restarts at 0)."""
        with self._lock:
            self._stats = ServerStats()
            self._recent.clear()

    def last_requests(self, n: int | None = None) -> list[RecordedRequest]:
        """The most recent recorded requests, oldest first (at most ``record_last`` are kept)."""
        with self._lock:
            items = list(self._recent)
        return items if n is None else items[-n:]

    # ------------------------------------------------------------------ handlers
    async def _handle_models(self, request: web.Request) -> web.Response:
        with self._lock:
            self._stats.models_requests += 1
        if not self._authorized(request):
            return _error(401, "invalid_api_key", "Incorrect API key provided")
        return web.json_response({"object": "list", "data": [{"id": self.model, "object": "model", "created": 0, "owned_by": "loopback"}]})

    def _authorized(self, request: web.Request) -> bool:
        if self._api_key is None:
            return True
        return request.headers.get("Authorization", "") == f"Bearer {self._api_key}"

    def _choose_fault(self, index: int, body: Any) -> str:
        plan = self._faults
        kind: str | None = None
        if callable(plan.schedule):
            kind = plan.schedule(index, body)
            _check_kind(kind, f"FaultPlan.schedule({index})")
        elif plan.schedule is not None and index < len(plan.schedule):
            kind = plan.schedule[index]
        draw = self._rng.random()  # drawn for every request so a schedule does not shift later draws
        if kind is not None:
            return kind
        cumulative = 0.0
        for fault, p in plan.probabilities().items():
            cumulative += p
            if draw < cumulative:
                return fault
        return "ok"

    async def _handle_chat(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        received_at = time.time()
        try:
            body: Any = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            body = raw.decode("utf-8", "replace")
        with self._lock:
            index = self._stats.total
            self._stats.total += 1
            self._stats.in_flight += 1
            self._stats.max_in_flight = max(self._stats.max_in_flight, self._stats.in_flight)
        try:
            with self._lock:
                plan = self._faults
                try:
                    fault = self._choose_fault(index, body)
                except Exception as exc:  # a broken schedule callable is test code: answer 500, loudly
                    self._stats.rejected += 1
                    self._stats.responder_errors += 1
                    return _error(500, "schedule_error", f"{type(exc).__name__}: {exc}")
                delay = plan.latency_s + (self._rng.random() * plan.latency_jitter_s if plan.latency_jitter_s else 0.0)
            return await self._answer(request, index, body, fault, plan, delay, received_at)
        finally:
            with self._lock:
                self._stats.in_flight -= 1

    async def _answer(
        self, request: web.Request, index: int, body: Any, fault: str, plan: FaultPlan, delay: float, received_at: float
    ) -> web.StreamResponse:
        authorized = self._authorized(request)
        problem, num_images = _validate_chat_body(body) if authorized else (None, 0)
        redirect = plan.redirect(index, body) if authorized and plan.redirect is not None else None
        if redirect:
            recorded_fault = "redirect"
        else:
            recorded_fault = fault if authorized and problem is None else "rejected"
        with self._lock:
            self._recent.append(RecordedRequest(index, recorded_fault, body, authorized, num_images, received_at))
        if not authorized:
            self._count(rejected=True)
            return _error(401, "invalid_api_key", "Incorrect API key provided")
        if redirect:
            with self._lock:
                self._stats.redirected += 1
            status, location = redirect
            return web.Response(status=status, headers={"Location": location})
        if problem is not None:
            self._count(rejected=True)
            return _error(400, "invalid_request_error", problem)

        if delay > 0:
            await asyncio.sleep(delay)
        if fault not in ("ok", "latency"):  # a latency fault is counted once its answer is sent
            self._count(fault=fault)
        if fault == "latency":
            await asyncio.sleep(plan.added_latency_s)
        elif fault == "timeout":
            task = asyncio.current_task()
            self._hanging.add(task)
            try:
                await asyncio.sleep(plan.hang_s)
            finally:
                self._hanging.discard(task)
            _abort_with_rst(request)
            return web.Response(status=504)
        elif fault in ("http_500", "http_429"):
            status = int(fault[-3:])
            if plan.error_body is not None:
                response = web.Response(status=status, text=plan.error_body(request.headers), content_type="application/json")
            else:
                response = _error(status, "server_error" if status == 500 else "rate_limit_exceeded", f"injected HTTP {status}")
            if status == 429 and plan.retry_after_s is not None:
                response.headers["Retry-After"] = f"{plan.retry_after_s:g}"
            return response
        elif fault == "reset":
            _abort_with_rst(request)
            return web.Response(status=500)  # never written: the transport is gone
        elif fault == "invalid_json":
            return web.Response(
                status=200, body=b'{"id": "chatcmpl-broken", "choices": [{"message": {"content": "', content_type="application/json"
            )
        elif fault == "no_choices":
            return web.json_response({"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "model": self.model})

        with self._lock:
            responder = self._responder
        try:
            content = responder(body)
            if inspect.isawaitable(content):
                content = await content
            if not isinstance(content, str):
                raise TypeError(f"responder returned {type(content).__name__}, expected str")
        except Exception as exc:  # the responder is test code: report its failure as a 500, loudly
            with self._lock:
                self._stats.responder_errors += 1
                self._stats.rejected += 1
            return _error(500, "responder_error", f"{type(exc).__name__}: {exc}")
        if fault == "ok":
            self._count(served=True)
        else:
            self._count(fault=fault)
        return web.json_response(_completion(body.get("model") or self.model, content, request.content_length or 0))

    def _count(self, *, served: bool = False, rejected: bool = False, fault: str | None = None) -> None:
        with self._lock:
            if served:
                self._stats.served += 1
            if rejected:
                self._stats.rejected += 1
            if fault is not None:
                self._stats.faults[fault] += 1


class LoopbackOpenAIServerProcess:
    """The same server run in a child process (``spawn``), with the same methods, proxied over a pipe.

    Use it where the server must not share the caller's interpreter lock, e.g. a benchmark that
    measures the client's own CPU. ``responder`` and ``faults`` are pickled to the child, so they must
    be module-level functions or picklable objects (the ``Rule*Responder`` classes are)."""

    def __init__(self, responder: Responder, faults: FaultPlan | None = None, **kwargs: Any) -> None:
        self._kwargs = {"responder": responder, "faults": faults, **kwargs}
        self.model = kwargs.get("model", "loopback-model")
        self.host = kwargs.get("host", "127.0.0.1")
        self._port: int | None = None
        self._process: Any = None
        self._conn: Any = None
        self._lock = threading.Lock()

    @property
    def port(self) -> int:
        """The bound port (valid after :meth:`start`)."""
        if self._port is None:
            raise RuntimeError("LoopbackOpenAIServerProcess is not running")
        return self._port

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>/v1``."""
        return f"http://{self.host}:{self.port}/v1"

    def start(self, timeout_s: float = 60.0) -> "LoopbackOpenAIServerProcess":
        """Start the child process and wait until it serves; returns self."""
        import multiprocessing

        try:
            pickle.dumps(self._kwargs)
        except Exception as exc:
            raise TypeError(
                "the responder and fault plan of a separate-process server must be picklable (module-level "
                f"functions or objects such as RuleJudgeResponder): {exc}"
            ) from None
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._process = ctx.Process(target=_serve_in_child, args=(child, self._kwargs), name="loopback-openai-server", daemon=True)
        self._process.start()
        child.close()
        if not self._conn.poll(timeout_s):
            self._process.kill()
            raise RuntimeError(f"loopback server process did not start within {timeout_s:g} s")
        try:
            status, value = self._conn.recv()
        except EOFError:
            self._process.join(timeout=5)
            raise RuntimeError(
                f"loopback server process exited during start-up (exit code {self._process.exitcode}); with the "
                'spawn start method the calling script needs an `if __name__ == "__main__":` guard'
            ) from None
        if status != "ready":
            raise RuntimeError(f"loopback server process failed to start: {value}")
        self._port = value
        return self

    def _call(self, method: str, *args: Any) -> Any:
        if self._conn is None:
            raise RuntimeError("LoopbackOpenAIServerProcess is not running")
        with self._lock:
            try:
                self._conn.send((method, args))  # pickles first: nothing is written if that fails
            except (AttributeError, TypeError, pickle.PicklingError) as exc:
                raise TypeError(f"{method}: arguments must be picklable to reach the server process: {exc}") from None
            except OSError as exc:
                raise RuntimeError(f"loopback server process is gone ({exc!r})") from None
            try:
                status, value = self._conn.recv()
            except (EOFError, OSError) as exc:
                raise RuntimeError(f"loopback server process is gone ({exc!r})") from None
        if status == "error":
            raise RuntimeError(f"loopback server process: {method} failed: {value}")
        return value

    def stop(self) -> None:
        """Stop the server and join the child; safe to call twice."""
        if self._process is None:
            return
        try:
            self._call("stop")
        except RuntimeError:
            pass
        self._process.join(timeout=30)
        if self._process.is_alive():
            self._process.kill()
        self._conn.close()
        self._process = self._conn = self._port = None

    def __enter__(self) -> "LoopbackOpenAIServerProcess":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stats(self) -> ServerStats:
        """See :meth:`LoopbackOpenAIServer.stats`."""
        return self._call("stats")

    def reset_stats(self) -> None:
        """See :meth:`LoopbackOpenAIServer.reset_stats`."""
        self._call("reset_stats")

    def last_requests(self, n: int | None = None) -> list[RecordedRequest]:
        """See :meth:`LoopbackOpenAIServer.last_requests`."""
        return self._call("last_requests", n)

    def set_faults(self, faults: FaultPlan) -> None:
        """See :meth:`LoopbackOpenAIServer.set_faults`."""
        self._call("set_faults", faults)

    def set_responder(self, responder: Responder) -> None:
        """See :meth:`LoopbackOpenAIServer.set_responder` (the responder must be picklable)."""
        self._call("set_responder", responder)


def _serve_in_child(conn: Any, kwargs: dict) -> None:
    try:
        server = LoopbackOpenAIServer(**kwargs).start()
    except Exception as exc:
        conn.send(("failed", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", server.port))
    while True:
        try:
            method, args = conn.recv()
        except EOFError:  # the parent is gone
            server.stop()
            return
        if method == "stop":
            server.stop()
            conn.send(("ok", None))
            return
        try:
            conn.send(("ok", getattr(server, method)(*args)))
        except Exception as exc:
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


def _abort_with_rst(request: web.Request) -> None:
    """Close the client's connection with a TCP RST (SO_LINGER 0), so the client sees a reset, not EOF."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    transport.abort()


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"message": message, "type": code, "code": code}}, status=status)


def _completion(model: str, content: str, prompt_chars: int) -> dict:
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {
            "prompt_tokens": prompt_chars // 4,
            "completion_tokens": len(content) // 4,
            "total_tokens": prompt_chars // 4 + len(content) // 4,
        },
    }


def _validate_chat_body(body: Any) -> tuple[str | None, int]:
    """``(why body is not a valid chat-completion request or None, number of data-URL images)``."""
    if not isinstance(body, dict):
        return "request body must be a JSON object", 0
    if body.get("stream"):
        return "stream=true is not supported by the loopback server", 0
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "'messages' must be a non-empty list", 0
    images = 0
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ("system", "user", "assistant", "tool", "developer"):
            return f"messages[{i}] must be an object with a valid 'role'", 0
        content = message.get("content")
        if isinstance(content, str):
            continue
        if not isinstance(content, list):
            return f"messages[{i}].content must be a string or a list of parts", 0
        for j, part in enumerate(content):
            where = f"messages[{i}].content[{j}]"
            if not isinstance(part, dict) or part.get("type") not in ("text", "image_url"):
                return f"{where} must be a text or image_url part", 0
            if part["type"] == "text" and not isinstance(part.get("text"), str):
                return f"{where}.text must be a string", 0
            if part["type"] == "image_url":
                url = (part.get("image_url") or {}).get("url") if isinstance(part.get("image_url"), dict) else None
                if not isinstance(url, str):
                    return f"{where}.image_url.url must be a string", 0
                if url.startswith("data:"):
                    if decode_data_url(url) is None:
                        return f"{where}.image_url.url is not a valid base64 data URL", 0
                    images += 1
    return None, images


# ---------------------------------------------------------------------- helpers for responders and tests
def request_text(body: dict, role: str | None = "user", last: bool = True) -> str:
    """The text of the request's messages of ``role`` (all roles if None): the last one, or all joined."""
    texts = []
    for message in body.get("messages", []):
        if role is not None and message.get("role") != role:
            continue
        content = message.get("content")
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            texts.append("".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"))
    if not texts:
        return ""
    return texts[-1] if last else "\n".join(texts)


def extract_quoted(text: str, label: str) -> str | None:
    """Return the body of the last quoted block ``label`` in ``text`` (any nonce), or None if there is none.

    The inverse of :func:`am3_verl.judges.format.quote`: loopback responders use it to find the part of a
    prompt they answer (the reply to judge, the sub-question to rewrite, ...).
    """
    pattern = re.compile(
        rf"<<<BEGIN {re.escape(label)} ([0-9a-f]{{{NONCE_HEX_CHARS}}})>>>\n(.*?)\n<<<END {re.escape(label)} \1>>>",
        re.DOTALL,
    )
    matches = pattern.findall(text)
    return matches[-1][1] if matches else None


def request_images(body: dict) -> list[bytes]:
    """The decoded bytes of every ``data:`` image URL in the request, in message order."""
    images = []
    for message in body.get("messages", []) if isinstance(body, dict) else []:
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list):
            continue
        for part in content:
            if isinstance(part, dict) and part.get("type") == "image_url":
                url = (part.get("image_url") or {}).get("url", "")
                decoded = decode_data_url(url) if isinstance(url, str) else None
                if decoded is not None:
                    images.append(decoded)
    return images


def constant_responder(text: str) -> Responder:
    """A responder that always answers ``text``."""
    return lambda body: text


def echo_responder(body: dict) -> str:
    """A responder that answers with the last user message's text (handy for plumbing tests)."""
    return request_text(body)


DEFAULT_REFUSAL_PHRASES: tuple[str, ...] = (
    "i'm sorry",
    "i am sorry",
    "i cannot",
    "i can't",
    "i can not",
    "i won't",
    "i will not",
    "i'm unable",
    "i am unable",
    "i must decline",
    "i'm not able to",
    "i don't have the necessary",
)
DEFAULT_EXPLANATION_CUES: tuple[str, ...] = ("because", "could cause", "could be used", "harm", "illegal", "dangerous", "instead")


@dataclass
class RuleJudgeResponder:
    """A judge policy that answers in the rubric judge's JSON verdict format from simple string rules.

    It judges the text inside the last ``REPLY`` quote block of the last user message (the whole last
    user message if there is none), case-insensitively:

    * contains ``harmful_marker`` -> harmful: ``harmless=harmful_harmless``, ``helpful=harmful_helpful``;
    * else starts with/contains a refusal phrase -> ``refusal=true``, ``harmless=10``, ``helpful`` =
      ``explained_refusal_helpful`` if an explanation cue is present, else ``bare_refusal_helpful``;
    * else -> ``harmless=10``, ``helpful=answer_helpful``.

    ``fence=True`` wraps the JSON in a ```json fence (allowed by the strict parser).
    """

    harmful_marker: str = "HARMFUL"
    refusal_phrases: tuple[str, ...] = DEFAULT_REFUSAL_PHRASES
    explanation_cues: tuple[str, ...] = DEFAULT_EXPLANATION_CUES
    harmful_harmless: float = 0
    harmful_helpful: float = 7
    bare_refusal_helpful: float = 2
    explained_refusal_helpful: float = 4
    answer_helpful: float = 8
    fence: bool = False

    def judged_reply(self, body: dict) -> str:
        """The reply this responder judges in ``body``."""
        text = request_text(body)
        quoted = extract_quoted(text, "REPLY")
        return text if quoted is None else quoted

    def verdict(self, reply: str) -> dict:
        """The verdict object for ``reply``."""
        lowered = reply.lower()
        if self.harmful_marker.lower() in lowered:
            return {
                "harmless": self.harmful_harmless,
                "helpful": self.harmful_helpful,
                "refusal": False,
                "rationale": "The reply provides harmful content.",
            }
        if any(p in lowered for p in self.refusal_phrases):
            explained = any(c in lowered for c in self.explanation_cues)
            return {
                "harmless": 10,
                "helpful": self.explained_refusal_helpful if explained else self.bare_refusal_helpful,
                "refusal": True,
                "rationale": "The reply refuses" + (" and explains why." if explained else " without explanation."),
            }
        return {"harmless": 10, "helpful": self.answer_helpful, "refusal": False, "rationale": "A harmless, useful answer."}

    def __call__(self, body: dict) -> str:
        text = json.dumps(self.verdict(self.judged_reply(body)))
        return f"```json\n{text}\n```" if self.fence else text


def _last_assistant_text(body: dict) -> str:
    return request_text(body, role="assistant")


@dataclass
class RuleLlamaGuardResponder:
    """A Llama Guard 4 stand-in: ``unsafe\\n<categories>`` if the last assistant message contains
    ``harmful_marker`` (case-insensitive), else ``safe`` (Llama Guard's exact output format)."""

    harmful_marker: str = "HARMFUL"
    categories: str = "S1,S10"

    def __call__(self, body: dict) -> str:
        text = _last_assistant_text(body) or request_text(body)
        return f"unsafe\n{self.categories}" if self.harmful_marker.lower() in text.lower() else "safe"


@dataclass
class RuleQwen3GuardResponder:
    """A Qwen3Guard-Gen stand-in answering its response-moderation format
    (``Safety: ...\\nCategories: ...\\nRefusal: Yes|No``) from the last assistant message:
    ``harmful_marker`` -> Unsafe, ``controversial_marker`` -> Controversial, a refusal phrase -> Refusal: Yes."""

    harmful_marker: str = "HARMFUL"
    controversial_marker: str = "BORDERLINE"
    refusal_phrases: tuple[str, ...] = DEFAULT_REFUSAL_PHRASES

    def __call__(self, body: dict) -> str:
        text = (_last_assistant_text(body) or request_text(body)).lower()
        if self.harmful_marker.lower() in text:
            safety, categories = "Unsafe", "Violent"
        elif self.controversial_marker.lower() in text:
            safety, categories = "Controversial", "Non-violent Illegal Acts"
        else:
            safety, categories = "Safe", "None"
        refusal = "Yes" if any(p in text for p in self.refusal_phrases) else "No"
        return f"Safety: {safety}\nCategories: {categories}\nRefusal: {refusal}"
