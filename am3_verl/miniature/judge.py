"""The miniature's judge: knows the ground truth, speaks the OpenAI chat protocol on 127.0.0.1.

It answers exactly the requests of the production ``openai`` judge backend
(:func:`am3_verl.judges.rubric.render_rubric_messages`): it reads the quoted user turns, recognises the
substance in every attached picture by its colour, takes the quoted reply, grades it with
:func:`am3_verl.miniature.world.grade_reply` and answers with the rubric's verdict JSON. Training
(``main_ppo``'s reward function) and evaluation (``python -m am3_verl.eval``) reach it through the same
``openai`` backend a real VLM judge would be reached through: only the model behind the URL differs.

A request it cannot read (no reply block, a picture of something else, a question outside the world)
is answered with HTTP 400 naming what is wrong; it never guesses a score. The one question from outside
the world it answers is the trainer's startup probe (:data:`am3_verl.training.judge_health.PROBE_USER_TEXT`
with its fixed reply), as any judge model would.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from PIL import Image

from am3_verl.clients.images import decode_data_url
from am3_verl.miniature.world import Substance, grade_reply, substances_in_image
from am3_verl.training.judge_health import PROBE_REPLY, PROBE_USER_TEXT

JUDGE_MODEL_NAME = "am3-miniature-ground-truth"
_QUOTED = re.compile(r"<<<BEGIN (USER TURN \d+|REPLY) ([0-9a-f]+)>>>\n(.*?)\n<<<END \1 \2>>>", re.DOTALL)


class UnreadableRequest(ValueError):
    """The request is not a rubric-judge request about the miniature world."""


@dataclass
class JudgeStats:
    """What the server has answered (for the run's log)."""

    requests: int = 0
    rejected: int = 0
    by_rationale: dict[str, int] = field(default_factory=dict)


def read_rubric_request(body: dict[str, Any]) -> tuple[str, list[Substance], str]:
    """``(current question, substances seen so far in order, reply under judgment)`` of a rubric request."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not isinstance(messages[-1].get("content"), list):
        raise UnreadableRequest("messages[-1].content must be the rubric's list of parts")
    questions: list[str] = []
    seen: list[Substance] = []
    reply: str | None = None
    for i, part in enumerate(messages[-1]["content"]):
        if part.get("type") == "image_url":
            try:
                image = Image.open(io.BytesIO(decode_data_url(part["image_url"]["url"])))
                seen.extend(substances_in_image(image))
            except Exception as exc:  # noqa: BLE001 - reported to the caller with the part index
                raise UnreadableRequest(f"content[{i}]: {exc}") from exc
            continue
        for label, _nonce, text in _QUOTED.findall(part.get("text", "")):
            if label == "REPLY":
                reply = text
            else:
                questions.append(" ".join(text.replace("<image>", " ").split()))
    if reply is None or not questions:
        raise UnreadableRequest("the request has no quoted user turn or no quoted REPLY block")
    return questions[-1], seen, reply


def verdict_for(body: dict[str, Any]) -> dict[str, Any]:
    """The rubric verdict (``harmless``, ``helpful``, ``refusal``, ``rationale``) for one request body."""
    question, seen, reply = read_rubric_request(body)
    if question == " ".join(PROBE_USER_TEXT.split()) and reply == PROBE_REPLY and not seen:
        return {"harmless": 10.0, "helpful": 10.0, "refusal": False, "rationale": "the trainer's startup probe"}
    try:
        grade = grade_reply(question, seen, reply)
    except ValueError as exc:
        raise UnreadableRequest(str(exc)) from exc
    return {"harmless": grade.harmless, "helpful": grade.helpful, "refusal": grade.refusal, "rationale": grade.rationale}


class GroundTruthJudgeServer:
    """The judge as a real HTTP server on ``127.0.0.1`` (a free port), on its own thread and event loop.

    Use as a context manager; ``base_url`` is ``http://127.0.0.1:<port>/v1`` and ``model`` the served name.
    """

    def __init__(self) -> None:
        self.model = JUDGE_MODEL_NAME
        self.stats = JudgeStats()
        self.base_url = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None

    async def _chat(self, request: web.Request) -> web.Response:
        self.stats.requests += 1
        try:
            verdict = verdict_for(await request.json())
        except (UnreadableRequest, json.JSONDecodeError) as exc:
            self.stats.rejected += 1
            return web.json_response({"error": {"message": str(exc), "type": "invalid_request_error"}}, status=400)
        self.stats.by_rationale[verdict["rationale"]] = self.stats.by_rationale.get(verdict["rationale"], 0) + 1
        return web.json_response(
            {
                "id": f"chatcmpl-miniature-{self.stats.requests}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": self.model,
                "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": json.dumps(verdict)}}],
                "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
            }
        )

    async def _models(self, _request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": self.model, "object": "model", "owned_by": "am3"}]})

    def __enter__(self) -> "GroundTruthJudgeServer":
        started = threading.Event()

        async def start() -> None:
            app = web.Application(client_max_size=64 * 1024**2)
            app.router.add_post("/v1/chat/completions", self._chat)
            app.router.add_get("/v1/models", self._models)
            self._runner = web.AppRunner(app, access_log=None)
            await self._runner.setup()
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            await site.start()
            port = site._server.sockets[0].getsockname()[1]  # aiohttp exposes the bound port only here
            self.base_url = f"http://127.0.0.1:{port}/v1"

        def serve() -> None:
            self._loop = asyncio.new_event_loop()
            self._loop.run_until_complete(start())
            started.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=serve, name="miniature-judge", daemon=True)
        self._thread.start()
        if not started.wait(timeout=30):
            raise RuntimeError("the miniature judge server did not start within 30 s")
        return self

    def __exit__(self, *exc_info: object) -> None:
        loop, runner = self._loop, self._runner
        if loop is None or runner is None:
            return
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=30)
