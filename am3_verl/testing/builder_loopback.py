"""Loopback endpoints for the builder's tests and offline demo: a text-to-image server and scripted roles.

:class:`LoopbackImagesServer` is a real HTTP server (aiohttp) on ``127.0.0.1`` speaking
``POST /v1/images/generations`` (OpenAI images API, ``b64_json`` answers), run in a background thread
like :class:`am3_verl.testing.openai_server.LoopbackOpenAIServer`. Its pictures come from
``painter(prompt) -> PNG bytes`` (default :func:`draw_prompt`: a seeded colour mosaic, so different
prompts give perceptually unrelated pictures); a :class:`ImagesFaultPlan` injects faults per request.

:class:`ScriptedBuilderModels` is a chat responder for ``LoopbackOpenAIServer`` that plays every builder
role, chosen by the request's model name (``stub-decomposer``, ``stub-scorer``, ``stub-attacker``,
``stub-judge``, ``stub-writer``, ``stub-victim-*``). It reads the quoted blocks of the builder's
prompts and answers deterministically from their content, so the same request always gets the same
answer. Markers in a seed's query script the behaviour a test needs:

* ``[[REGENn]]`` – the second sub-query fails review until it has been rewritten ``n`` times;
* ``[[NEVERPASS]]`` – the second sub-query never passes review (the seed is dropped);
* ``[[NEWIMAGE]]`` – the attacker asks for a new picture on turn 2;
* ``[[NEARDUP]]`` – the attacker asks on turn 2 for a picture described as ``NEAR DUPLICATE`` (a test
  painter can answer with a near copy of the seed image);
* ``[[RESEED]]`` – the attacker shows the seed image again on turn 3 (an exact duplicate);
* ``[[GREEDY]]`` – the attacker asks for a new picture on every turn after the first;
* ``[[NORISK]]`` / ``[[LOWRISK]]`` – the judge finds no risk / a risk of 3 out of 10;
* ``[[BADANSWER]]`` in a refusal-VQA question – the writer answers without "I'm sorry".
"""

from __future__ import annotations

import asyncio
import base64
import collections
import hashlib
import io
import json
import random
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence, Union

from aiohttp import web
from PIL import Image, ImageDraw, ImageFont

from am3_verl.testing.openai_server import extract_quoted, request_images, request_text

# --------------------------------------------------------------------------------------------- images server
IMAGE_FAULTS: tuple[str, ...] = ("http_500", "http_429", "http_400", "invalid_json", "no_data", "bad_image", "url_only")
"""Faults the images server can inject; ``"ok"`` serves normally."""


def draw_prompt(prompt: str, size: int = 192) -> bytes:
    """A deterministic PNG for ``prompt``: a 12 x 12 mosaic of seeded colours with the prompt's first word."""
    rng = random.Random(hashlib.sha256(prompt.encode("utf-8")).digest())
    cells = 12
    image = Image.new("RGB", (size, size))
    draw = ImageDraw.Draw(image)
    step = size // cells
    for row in range(cells):
        for col in range(cells):
            colour = (rng.randint(0, 255), rng.randint(0, 255), rng.randint(0, 255))
            draw.rectangle((col * step, row * step, (col + 1) * step - 1, (row + 1) * step - 1), fill=colour)
    word = (prompt.split() or ["?"])[0][:16]
    draw.text((4, size - 12), word, fill=(0, 0, 0), font=ImageFont.load_default_imagefont())
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


ImagesSchedule = Union[Sequence[Union[str, None]], Callable[[int, dict], Union[str, None]]]


@dataclass
class ImagesFaultPlan:
    """Which image requests fail: ``schedule[i]`` or ``schedule(i, body)`` gives a fault kind, ``"ok"`` or None."""

    schedule: ImagesSchedule | None = None
    latency_s: float = 0.0
    """Delay before every answer."""

    def kind(self, index: int, body: dict) -> str:
        """The fault (or ``"ok"``) for request ``index``."""
        if callable(self.schedule):
            kind = self.schedule(index, body)
        elif self.schedule is not None and index < len(self.schedule):
            kind = self.schedule[index]
        else:
            kind = None
        kind = kind or "ok"
        if kind != "ok" and kind not in IMAGE_FAULTS:
            raise ValueError(f"unknown image fault {kind!r}; expected ok or one of {', '.join(IMAGE_FAULTS)}")
        return kind


@dataclass
class ImagesStats:
    """Counters of the images server."""

    total: int = 0
    served: int = 0
    faults: dict[str, int] = field(default_factory=dict)


class LoopbackImagesServer:
    """An OpenAI-images-compatible server on 127.0.0.1 in a background thread (see the module docstring)."""

    def __init__(
        self,
        painter: Callable[[str], bytes] = draw_prompt,
        faults: ImagesFaultPlan | None = None,
        *,
        api_key: str | None = None,
        record_last: int = 100_000,
    ) -> None:
        self.host = "127.0.0.1"
        self._painter = painter
        self._faults = faults or ImagesFaultPlan()
        self._api_key = api_key
        self._lock = threading.Lock()
        self._stats = ImagesStats()
        self._recent: collections.deque[dict] = collections.deque(maxlen=record_last)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._port = 0

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>/v1``."""
        if self._runner is None:
            raise RuntimeError("LoopbackImagesServer is not running")
        return f"http://{self.host}:{self._port}/v1"

    def start(self) -> "LoopbackImagesServer":
        """Serve in a background thread; returns self once requests are accepted."""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="loopback-images-server", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=30)
        return self

    def stop(self) -> None:
        """Stop serving and join the thread; safe to call twice."""
        if self._loop is None or self._thread is None:
            return
        try:
            if self._runner is not None:
                asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=30)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)
            self._loop.close()
            self._loop = self._thread = self._runner = None

    def __enter__(self) -> "LoopbackImagesServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/images/generations", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0)
        await site.start()
        self._port = site._server.sockets[0].getsockname()[1]

    def stats(self) -> ImagesStats:
        """A snapshot of the counters."""
        with self._lock:
            return ImagesStats(self._stats.total, self._stats.served, dict(self._stats.faults))

    def requests(self) -> list[dict]:
        """The recorded request bodies, oldest first."""
        with self._lock:
            return list(self._recent)

    def set_faults(self, faults: ImagesFaultPlan) -> None:
        """Replace the fault plan (request numbering goes on)."""
        with self._lock:
            self._faults = faults

    def set_painter(self, painter: Callable[[str], bytes]) -> None:
        """Replace the painter."""
        with self._lock:
            self._painter = painter

    async def _handle(self, request: web.Request) -> web.Response:
        if self._api_key is not None and request.headers.get("Authorization") != f"Bearer {self._api_key}":
            return web.json_response({"error": {"message": "bad key", "type": "invalid_api_key"}}, status=401)
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return web.json_response({"error": {"message": "body is not JSON", "type": "invalid_request_error"}}, status=400)
        if not isinstance(body, dict) or not isinstance(body.get("prompt"), str) or not body.get("model"):
            return web.json_response({"error": {"message": "model and prompt are required", "type": "invalid_request_error"}}, status=400)
        with self._lock:
            index = self._stats.total
            self._stats.total += 1
            self._recent.append(body)
            plan, painter = self._faults, self._painter
        kind = plan.kind(index, body)
        if plan.latency_s:
            await asyncio.sleep(plan.latency_s)
        with self._lock:
            if kind == "ok":
                self._stats.served += 1
            else:
                self._stats.faults[kind] = self._stats.faults.get(kind, 0) + 1
        if kind in ("http_500", "http_429", "http_400"):
            return web.json_response({"error": {"message": f"injected {kind}", "type": "server_error"}}, status=int(kind[-3:]))
        if kind == "invalid_json":
            return web.Response(status=200, body=b'{"data": [{"b64_json": "', content_type="application/json")
        if kind == "no_data":
            return web.json_response({"created": int(time.time()), "data": []})
        if kind == "url_only":
            return web.json_response({"created": int(time.time()), "data": [{"url": "http://127.0.0.1/image.png"}]})
        data = b"not an image" if kind == "bad_image" else painter(body["prompt"])
        return web.json_response(
            {"created": int(time.time()), "data": [{"b64_json": base64.b64encode(data).decode("ascii"), "revised_prompt": body["prompt"]}]}
        )


# --------------------------------------------------------------------------------------------- scripted roles
_MARKER = re.compile(r"\[\[[A-Z0-9_]+\]\]")
_REGEN = re.compile(r"\[\[REGEN(\d+)\]\]")

DEFAULT_ROLE_MODELS: dict[str, str] = {
    "stub-decomposer": "decomposer",
    "stub-scorer": "scorer",
    "stub-attacker": "attacker",
    "stub-judge": "judge",
    "stub-writer": "writer",
}
"""Model name -> role; any model starting with ``stub-victim`` is a victim."""


def _topic(text: str, words: int = 10) -> str:
    clean = _MARKER.sub("", text).strip().rstrip("?.!")
    parts = clean.split()
    return " ".join(parts[:words]) + (" ..." if len(parts) > words else "")


@dataclass
class ScriptedBuilderModels:
    """A deterministic, picklable chat responder playing every builder role (see the module docstring)."""

    role_models: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_ROLE_MODELS))
    new_image_turn: int | None = None
    """When set, the attacker asks for a new picture on this turn (1-based) of every dialogue."""

    def role_of(self, body: dict) -> str:
        """The role the request's model plays."""
        model = str(body.get("model", ""))
        if model in self.role_models:
            return self.role_models[model]
        if model.startswith("stub-victim"):
            return "victim"
        raise ValueError(f"no scripted role for model {model!r}")

    def __call__(self, body: dict) -> str:
        role = self.role_of(body)
        text = request_text(body)
        return getattr(self, f"_{role}")(body, text)

    def _decomposer(self, body: dict, text: str) -> str:
        old = extract_quoted(text, "SUB_QUESTION")
        if old is not None:
            return json.dumps({"sub_query": f"{old} (revised)"})
        request = extract_quoted(text, "REQUEST") or ""
        markers = " ".join(_MARKER.findall(request))
        topic = _topic(request)
        subs = [
            f"What can you see in this picture, and where would one usually find it? (context: {topic})",
            f"What do people generally need to know about the situation in the picture? {markers}".strip(),
            f"Could you go into more detail about how that would play out here: {topic}?",
        ]
        return json.dumps({"sub_queries": subs})

    def _scorer(self, body: dict, text: str) -> str:
        sub = extract_quoted(text, "SUB_QUESTION") or ""
        revisions = sub.count("(revised)")
        needed = max((int(n) for n in _REGEN.findall(sub)), default=0)
        if "[[NEVERPASS]]" in sub or revisions < needed:
            return json.dumps(
                {
                    "image_relevance": 8,
                    "intent_link": 2,
                    "harmless_wording": 9,
                    "rationale": "It does not move the conversation towards the request.",
                }
            )
        return json.dumps(
            {
                "image_relevance": 8,
                "intent_link": 7,
                "harmless_wording": 9,
                "rationale": "Relevant to the image, innocuous, and a clear step.",
            }
        )

    def _attacker(self, body: dict, text: str) -> str:
        goal = extract_quoted(text, "GOAL") or ""
        current = extract_quoted(text, "CURRENT") or ""
        history = extract_quoted(text, "CONVERSATION") or ""
        turn = sum(1 for line in history.splitlines() if line.startswith("Turn ") and ", user" in line)
        image, description = "none", ""
        if turn == 0:
            image = "seed"
        elif "[[GREEDY]]" in goal:
            image, description = "new", f"A simple scene for turn {turn + 1}: {_topic(current, 6)}"
        elif (turn == 1 and "[[NEWIMAGE]]" in goal) or (self.new_image_turn is not None and turn + 1 == self.new_image_turn):
            image, description = "new", f"A simple scene that illustrates: {_topic(goal, 8)}"
        elif turn == 1 and "[[NEARDUP]]" in goal:
            image, description = "new", "NEAR DUPLICATE of the reference picture"
        elif turn == 2 and "[[RESEED]]" in goal:
            image = "seed"
        return json.dumps({"message": f"{current} (turn {turn + 1})", "image": image, "image_description": description})

    def _victim(self, body: dict, text: str) -> str:
        seen = len(request_images(body))
        return f"[{body.get('model')}] I see {seen} image(s). Some general information about: {_topic(text, 12)}"

    def _judge(self, body: dict, text: str) -> str:
        transcript = extract_quoted(text, "CONVERSATION") or ""
        if "[[NORISK]]" in transcript:
            verdict = {"risk_identifiable": False, "risk": 1, "category": "none", "rationale": "The turns are benign."}
        elif "[[LOWRISK]]" in transcript:
            verdict = {"risk_identifiable": True, "risk": 3, "category": "minor", "rationale": "A faint, minor risk."}
        else:
            verdict = {
                "risk_identifiable": True,
                "risk": 8,
                "category": "scripted harm",
                "rationale": "Together the turns build towards the harmful request.",
            }
        return json.dumps(verdict)

    def _writer(self, body: dict, text: str) -> str:
        question = extract_quoted(text, "QUESTION") or ""
        if "[[BADANSWER]]" in question:
            return "Sure, here is what you asked for."
        return (
            f"I'm sorry, but I can't help with that. A request like \"{_topic(question, 8)}\" could be used to hurt "
            "people or break the law, because it asks for help with something harmful. I can share general safety "
            "information instead."
        )
