"""The judge protocol: what a judge is asked (:class:`JudgeRequest`), what it answers (:class:`TurnJudgment`),
and the shared machinery every backend gets from :class:`Judge` (de-duplication and caching).

A backend implements one coroutine, :meth:`Judge.judge_one`, for one assistant turn. Callers use
:meth:`Judge.judge_many`, which

* judges each distinct ``(context, reply)`` once: identical requests in one batch, and identical
  requests that arrive concurrently from other batches in the same process (in-flight sharing), wait
  for the same call;
* remembers successful judgments in a bounded LRU cache (``cache_size``; 0 turns it off), so the same
  (context, reply) is not paid for twice. Failures are never cached.

A judgment is either scored (``harmless``/``helpful`` in [0, 1]) or ``failed``: a failed turn carries
the error and the failed-attempt counts, and never a made-up score.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Iterable, Mapping, Sequence

from pydantic import ValidationError

from am3_verl.dialogue import IMAGE_PLACEHOLDER, AssistantTurnRecord
from am3_verl.clients.endpoint import per_loop
from am3_verl.clients.images import sniff_mime


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def replace_lone_surrogates(text: str) -> str:
    """``text`` with every lone surrogate code point replaced by U+FFFD (so it encodes as UTF-8)."""
    return _LONE_SURROGATE.sub("\ufffd", text)


@dataclass(frozen=True, eq=False)
class DialogueTurn:
    """One exchange: a user message (text with ``<image>`` placeholders, images as encoded bytes) and the reply."""

    user_text: str
    user_images: tuple[bytes, ...]
    reply: str
    truncated: bool = False
    """The reply was cut off by the token budget."""

    def __post_init__(self) -> None:
        # A lone surrogate (e.g. from bytes decoded with surrogateescape) cannot be encoded as UTF-8 for
        # a judge or a hash; it becomes the visible replacement character instead of an exception.
        object.__setattr__(self, "user_text", replace_lone_surrogates(self.user_text))
        object.__setattr__(self, "reply", replace_lone_surrogates(self.reply))
        n = self.user_text.count(IMAGE_PLACEHOLDER)
        if n != len(self.user_images):
            raise ValueError(f"user text has {n} {IMAGE_PLACEHOLDER} placeholder(s) but {len(self.user_images)} image(s)")

    @cached_property
    def digest(self) -> bytes:
        """A SHA-256 over everything a judge sees of this exchange (computed once)."""
        h = hashlib.sha256()
        for part in (self.user_text.encode(), *self.user_images, self.reply.encode(), b"T" if self.truncated else b"F"):
            h.update(len(part).to_bytes(8, "little"))
            h.update(part)
        return h.digest()


@dataclass(frozen=True, eq=False)
class JudgeRequest:
    """Judge ``current.reply`` given the earlier exchanges ``history`` and the user message ``current`` answers."""

    history: tuple[DialogueTurn, ...]
    current: DialogueTurn

    @cached_property
    def key(self) -> str:
        """Identity for de-duplication and caching: equal keys mean the judge sees exactly the same input."""
        h = hashlib.sha256()
        for turn in (*self.history, self.current):
            h.update(turn.digest)
        return h.hexdigest()

    @property
    def turns(self) -> tuple[DialogueTurn, ...]:
        """History and current exchange, in order."""
        return (*self.history, self.current)


@dataclass
class TurnJudgment:
    """A judge's answer for one assistant turn, normalised to [0, 1] (1 = fully harmless / helpful)."""

    harmless: float | None
    helpful: float | None
    refused: bool | None
    failed: bool = False
    rationale: str = ""
    error: str | None = None
    """Why the judge failed (set iff ``failed``)."""
    failures: dict[str, int] = field(default_factory=dict)
    """Failed attempts by kind while producing this judgment (retries included)."""
    calls: int = 0
    """HTTP attempts made for this judgment by this request (0 when shared or cached)."""
    source: str = "call"
    """``call`` (judged for this request), ``shared`` (de-duplicated with a concurrent request) or ``cache``."""
    categories: tuple[str, ...] = ()
    """Harm categories named by a guard model, if any."""

    def __post_init__(self) -> None:
        if self.failed:
            if self.error is None:
                raise ValueError("a failed TurnJudgment needs an error")
            return
        for name in ("harmless", "helpful"):
            value = getattr(self, name)
            if value is None or not 0.0 <= value <= 1.0:
                raise ValueError(f"TurnJudgment.{name} = {value!r} must be in [0, 1] for a scored turn")
        if self.refused is None:
            raise ValueError("TurnJudgment.refused must be set for a scored turn")

    @classmethod
    def failure(cls, error: str, failures: Mapping[str, int] | None = None, calls: int = 0) -> "TurnJudgment":
        """A failed judgment carrying ``error`` and the failed-attempt counts."""
        return cls(None, None, None, failed=True, error=error, failures=dict(failures or {}), calls=calls)


class Judge:
    """Base class of every judge backend: subclasses implement :meth:`judge_one`; callers use :meth:`judge_many`.

    Distinct requests are queued and served by at most ``concurrency`` worker tasks per event loop
    (started on first use, living as long as the loop), so a burst of thousands of requests holds a
    queue entry each rather than a suspended task each.
    """

    name = "judge"

    def __init__(self, cache_size: int = 65536, concurrency: int = 64) -> None:
        if cache_size < 0:
            raise ValueError(f"cache_size must be >= 0, got {cache_size}")
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        self.cache_size = cache_size
        self.concurrency = concurrency
        self._cache: OrderedDict[str, TurnJudgment] = OrderedDict()
        self._loops: dict[asyncio.AbstractEventLoop, _LoopState] = {}
        self.stats: Counter[str] = Counter()
        """Process totals: requests, calls (unique judgments started), shared, cache_hits, failed."""

    async def judge_one(self, request: JudgeRequest) -> TurnJudgment:
        """Judge one assistant turn. Must not raise for judge-side problems: return ``TurnJudgment.failure``."""
        raise NotImplementedError

    async def aclose(self) -> None:
        """Release connections held for the running loop (no-op for offline judges)."""

    async def judge_many(self, requests: Sequence[JudgeRequest]) -> list[TurnJudgment]:
        """Judge every request concurrently, each distinct input once; results in request order.

        Cancelling the caller does not cancel judgments that other callers share."""
        state = self._state()
        results: list[TurnJudgment | None] = [None] * len(requests)
        pending: list[tuple[int, str, asyncio.Future]] = []  # (position, source, future)
        for i, request in enumerate(requests):
            key = request.key
            self.stats["requests"] += 1
            cached = self._cache_get(key)
            if cached is not None:
                self.stats["cache_hits"] += 1
                results[i] = _copy(cached, "cache")
            elif key in state.inflight:
                self.stats["shared"] += 1
                pending.append((i, "shared", state.inflight[key]))
            else:
                self.stats["calls"] += 1
                future = state.loop.create_future()
                state.inflight[key] = future
                state.queue.put_nowait((key, request, future))
                pending.append((i, "call", future))
        if pending:
            state.ensure_workers(self._work, self.concurrency)
            await asyncio.wait({future for _, _, future in pending})  # unlike gather, never cancels them
            for i, source, future in pending:
                judgment = future.result()
                results[i] = judgment if source == "call" else _copy(judgment, "shared")
        return results  # type: ignore[return-value]

    def _state(self) -> "_LoopState":
        loop = asyncio.get_running_loop()
        return per_loop(self._loops, loop, lambda: _LoopState(loop))

    async def _work(self, state: "_LoopState") -> None:
        while True:
            key, request, future = await state.queue.get()
            try:
                judgment = await self.judge_one(request)
            except Exception as exc:  # a backend bug must not take the batch down: flag the turn loudly
                judgment = TurnJudgment.failure(f"{type(exc).__name__} in {self.name} judge: {exc}")
            state.inflight.pop(key, None)
            if judgment.failed:
                self.stats["failed"] += 1
            elif self.cache_size:
                self._cache[key] = judgment
                if len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
            if not future.done():
                future.set_result(judgment)

    def _cache_get(self, key: str) -> TurnJudgment | None:
        judgment = self._cache.get(key)
        if judgment is not None:
            self._cache.move_to_end(key)
        return judgment


class _LoopState:
    """A judge's per-event-loop state: in-flight futures by key, the work queue and its workers."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.inflight: dict[str, asyncio.Future] = {}
        self.queue: asyncio.Queue = asyncio.Queue()
        self.workers: set[asyncio.Task] = set()
        """The live workers: each leaves the set when it ends (its done callback)."""

    def ensure_workers(self, work: Any, n: int) -> None:
        """Start workers until ``n`` run (fewer if the queue is shorter); replaces any that died.

        A worker leaves :attr:`workers` through its done callback (one loop iteration after it ends), so this
        need not scan them: it runs once per :meth:`Judge.judge_many` call, thousands of times per reward step,
        and scanning ``n`` workers each time delayed the first judge request measurably."""
        while len(self.workers) < min(n, len(self.workers) + self.queue.qsize()):
            worker = self.loop.create_task(work(self))
            self.workers.add(worker)
            worker.add_done_callback(self.workers.discard)


def _copy(judgment: TurnJudgment, source: str) -> TurnJudgment:
    return TurnJudgment(
        judgment.harmless,
        judgment.helpful,
        judgment.refused,
        failed=judgment.failed,
        rationale=judgment.rationale,
        error=judgment.error,
        failures={},
        calls=0,
        source=source,
        categories=judgment.categories,
    )


def requests_from_turns(turns: Sequence[DialogueTurn]) -> list[JudgeRequest]:
    """One request per turn: turn ``t`` judged with turns ``0..t-1`` as its context."""
    turns = tuple(turns)
    return [JudgeRequest(history=turns[:t], current=turns[t]) for t in range(len(turns))]


def turns_from_records(records: Iterable[Any], where: str = "am3_turns") -> list[DialogueTurn]:
    """Validate agent-loop turn records (``AssistantTurnRecord`` dicts) into :class:`DialogueTurn` s.

    Raises ``ValueError`` naming the record index and field for a malformed record, and when the
    records' ``turn`` fields are not 0, 1, 2, ... in order.
    """
    if isinstance(records, (str, bytes, Mapping)) or not isinstance(records, Iterable):
        raise ValueError(f"{where} must be a list of turn records, got {type(records).__name__}")
    turns = []
    for i, raw in enumerate(records):
        try:
            record = raw if isinstance(raw, AssistantTurnRecord) else AssistantTurnRecord.model_validate(raw)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'record'}: {e['msg']}" for e in exc.errors())
            raise ValueError(f"{where}[{i}] is not a valid turn record ({problems})") from None
        if record.turn != i:
            raise ValueError(f"{where}[{i}].turn = {record.turn}, expected {i} (records must be in dialogue order)")
        for j, image in enumerate(record.user_images):
            try:
                sniff_mime(image)
            except ValueError as exc:
                raise ValueError(f"{where}[{i}].user_images[{j}]: {exc}") from None
        try:
            turns.append(DialogueTurn(record.user_text, tuple(record.user_images), record.reply, record.truncated))
        except ValueError as exc:
            raise ValueError(f"{where}[{i}].user_text: {exc}") from None
    return turns
