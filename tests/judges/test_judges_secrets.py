"""API keys never appear in logs, printed output, results, errors or reprs, on success and failure paths."""

from __future__ import annotations

import asyncio
import logging
import threading

from aiohttp import web

from am3_verl.clients.chat import ChatClient
from am3_verl.clients.endpoint import EndpointConfig
from am3_verl.judges.config import get_judge, resolve_judge_config
from am3_verl.judges.reward import compute_score
from am3_verl.testing.openai_server import FaultPlan, LoopbackOpenAIServer, RuleJudgeResponder
from judge_helpers import make_png, make_records

SECRET = "sk-am3-test-7f3a9c1e5b2d4a60"
EXCHANGES = [
    ("Look at <image>", [make_png()], "A picture."),
    ("And then?", [], "I'm sorry, I can't help with that."),
    ("Why?", [], "Because it is HARMFUL."),
]


def test_the_key_from_the_environment_is_used_and_never_leaked(monkeypatch, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("AM3_JUDGE_API_KEY", SECRET)
    schedule = ["http_500", "reset", "invalid_json", "no_choices", "timeout", "http_429"]
    plan = FaultPlan(schedule=schedule + ["ok"] * 10, hang_s=30)
    with LoopbackOpenAIServer(RuleJudgeResponder(), plan, api_key=SECRET) as server:
        kwargs = dict(backend="openai", base_url=server.base_url, model="j", timeout_s=0.5, backoff_initial_s=0.01, max_concurrency=1,
                      max_attempts=8)  # fmt: skip
        out = asyncio.run(compute_score("ds", "", None, {"am3_turns": make_records(EXCHANGES)}, **kwargs))
        server.set_faults(FaultPlan(p_http_500=1.0))
        all_failed = asyncio.run(
            compute_score(
                "ds", "", None, {"am3_turns": make_records(EXCHANGES[:1])}, **{**kwargs, "max_attempts": 1, "cache_size": 0}
            )  # fmt: skip
        )
        recorded = server.last_requests()
    # the key was used: every request the server saw was authorised
    assert recorded and all(r.authorized for r in recorded)
    assert out["num_judged_turns"] == 3 and out["judge_retries"] == len(schedule)
    assert all_failed["judge_failures"] == 1
    config = resolve_judge_config(kwargs)
    judge = get_judge(config)
    printed = capsys.readouterr()
    haystacks = {
        "logs": caplog.text,
        "stdout": printed.out,
        "stderr": printed.err,
        "result": repr(out) + repr(all_failed),
        "config": repr(config) + config.describe(),
        "judge": repr(judge) + repr(judge.client) + repr(judge.client.endpoint) + repr(judge.client.transport),
        "recorded": repr(recorded),
    }
    assert "/chat/completions failed after" in caplog.text  # failure paths really were logged
    for where, text in haystacks.items():
        assert SECRET not in text, f"API key leaked into {where}"


def test_a_key_echoed_by_a_server_is_redacted_from_errors_and_logs(caplog, monkeypatch):
    """Some servers echo the presented key in their error body; the client removes it."""
    caplog.set_level(logging.DEBUG)

    async def echo_auth(request: web.Request) -> web.Response:
        return web.json_response({"error": {"message": f"key {request.headers.get('Authorization')} is invalid"}}, status=500)

    ready = threading.Event()
    state: dict = {}

    def serve() -> None:
        loop = asyncio.new_event_loop()
        app = web.Application()
        app.router.add_post("/v1/chat/completions", echo_auth)
        runner = web.AppRunner(app, access_log=None)
        loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        loop.run_until_complete(site.start())
        state.update(loop=loop, runner=runner, port=site._server.sockets[0].getsockname()[1])
        ready.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())
        loop.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    ready.wait(10)
    try:
        monkeypatch.setenv("AM3_TEST_ECHOED_KEY", SECRET)
        client = ChatClient(
            EndpointConfig(
                base_url=f"http://127.0.0.1:{state['port']}/v1",
                model="m",
                api_key_env="AM3_TEST_ECHOED_KEY",
                max_attempts=2,
                backoff_initial_s=0.01,
            )  # fmt: skip
        )

        async def go():
            try:
                return await client.complete([{"role": "user", "content": "x"}])
            finally:
                await client.aclose()

        result = asyncio.run(go())
    finally:
        state["loop"].call_soon_threadsafe(state["loop"].stop)
        thread.join(10)
    assert not result.ok and "key Bearer *** is invalid" in result.error
    assert SECRET not in result.error and SECRET not in caplog.text and SECRET not in repr(result)


QUOTED_SECRET = 'sk-"am3"/key+with spaces&more'


def test_every_encoding_of_a_key_is_redacted():
    import json
    from urllib.parse import quote, quote_plus

    from am3_verl.clients.redaction import redact

    forms = [QUOTED_SECRET, json.dumps(QUOTED_SECRET)[1:-1], quote(QUOTED_SECRET, safe=""), quote_plus(QUOTED_SECRET)]
    text = " | ".join(f"server said {form}" for form in forms)
    assert redact(text, QUOTED_SECRET) == " | ".join("server said ***" for _ in forms)


def test_an_endpoint_that_echoes_the_key_in_its_answer_never_returns_it(monkeypatch):
    import json
    from urllib.parse import quote

    monkeypatch.setenv("AM3_TEST_QUOTED_KEY", QUOTED_SECRET)
    echo = f"key {QUOTED_SECRET} / {json.dumps(QUOTED_SECRET)} / {quote(QUOTED_SECRET, safe='')}"
    with LoopbackOpenAIServer(lambda body: echo, api_key=QUOTED_SECRET) as server:
        client = ChatClient(EndpointConfig(base_url=server.base_url, model="m", api_key_env="AM3_TEST_QUOTED_KEY", max_attempts=1))

        async def ask():
            try:
                return await client.complete([{"role": "user", "content": "hi"}])
            finally:
                await client.aclose()

        result = asyncio.run(ask())
    assert result.ok and "***" in result.content
    for form in ("am3", "%22am3%22", '\\"am3\\"'):
        assert form not in result.content
