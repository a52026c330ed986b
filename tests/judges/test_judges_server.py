"""The loopback OpenAI-compatible server: protocol, every fault kind, counters, recording, concurrency."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time

import httpx
import pytest

from am3_verl.judges.format import parse_rubric_answer, quote
from am3_verl.testing.openai_server import (
    FAULT_KINDS,
    FaultPlan,
    LoopbackOpenAIServer,
    RuleJudgeResponder,
    RuleLlamaGuardResponder,
    RuleQwen3GuardResponder,
    constant_responder,
    echo_responder,
    request_images,
)

# Self-tests of a test double (the loopback server), with real latencies and hangs: the slow tier.
pytestmark = pytest.mark.slow

CHAT = {"model": "judge", "messages": [{"role": "user", "content": "hello"}]}


def post(server: LoopbackOpenAIServer, body: dict = CHAT, timeout: float = 5.0, **kw) -> httpx.Response:
    with httpx.Client(base_url=server.base_url, timeout=timeout) as client:
        return client.post("/chat/completions", json=body, **kw)


def test_chat_completion_and_models_speak_the_openai_protocol():
    with LoopbackOpenAIServer(echo_responder, model="m-1") as server:
        assert server.base_url.startswith("http://127.0.0.1:") and server.base_url.endswith("/v1")
        reply = post(server)
        assert reply.status_code == 200
        payload = reply.json()
        assert payload["object"] == "chat.completion"
        assert payload["choices"][0]["message"] == {"role": "assistant", "content": "hello"}
        assert payload["choices"][0]["finish_reason"] == "stop"
        assert payload["usage"]["total_tokens"] >= 0
        with httpx.Client(base_url=server.base_url) as client:
            models = client.get("/models").json()
        assert models["data"][0]["id"] == "m-1"
        stats = server.stats()
        assert (stats.total, stats.served, stats.models_requests) == (1, 1, 1)
        assert server.last_requests()[-1].body == CHAT


def test_every_fault_kind_by_schedule_reaches_the_client_as_that_fault():
    schedule = ["ok", "http_500", "http_429", "reset", "invalid_json", "no_choices", "latency", "timeout", "ok"]
    plan = FaultPlan(schedule=schedule, added_latency_s=0.3, hang_s=30)
    with LoopbackOpenAIServer(constant_responder("fine"), plan) as server:
        outcomes = []
        for _ in schedule:
            start = time.perf_counter()
            try:
                r = post(server, timeout=1.0)
                outcomes.append((r.status_code, r.text, time.perf_counter() - start))
            except httpx.HTTPError as exc:
                outcomes.append((type(exc).__name__, str(exc), time.perf_counter() - start))
        ok, e500, e429, reset, bad_json, no_choices, slow, hang, ok_again = outcomes
        assert ok[0] == 200 and json.loads(ok[1])["choices"][0]["message"]["content"] == "fine"
        assert e500[0] == 500 and json.loads(e500[1])["error"]["code"] == "server_error"
        assert e429[0] == 429 and json.loads(e429[1])["error"]["code"] == "rate_limit_exceeded"
        assert reset[0] in ("ReadError", "RemoteProtocolError") and reset[2] < 1.0
        assert bad_json[0] == 200
        with pytest.raises(json.JSONDecodeError):
            json.loads(bad_json[1])
        assert no_choices[0] == 200 and "choices" not in json.loads(no_choices[1])
        assert slow[0] == 200 and slow[2] >= 0.3
        assert hang[0] == "ReadTimeout" and hang[2] >= 1.0
        assert ok_again[0] == 200
        stats = server.stats()
        assert stats.total == len(schedule)
        assert stats.served == 2
        assert stats.faults == {kind: 1 for kind in FAULT_KINDS}
        assert [r.fault for r in server.last_requests()] == schedule


def test_fault_probabilities_are_seeded_and_reproducible():
    plan = dict(p_http_500=0.2, p_reset=0.1, p_no_choices=0.1, seed=7)

    def run() -> list[str]:
        with LoopbackOpenAIServer(constant_responder("x"), FaultPlan(**plan)) as server:
            with httpx.Client(base_url=server.base_url, timeout=5) as client:
                for _ in range(200):
                    try:
                        client.post("/chat/completions", json=CHAT)
                    except httpx.HTTPError:
                        pass
            return [r.fault for r in server.last_requests()]

    first, second = run(), run()
    assert first == second
    assert 20 <= first.count("http_500") <= 60
    assert 5 <= first.count("reset") <= 35
    assert 5 <= first.count("no_choices") <= 35
    assert first.count("ok") == 200 - first.count("http_500") - first.count("reset") - first.count("no_choices")


def test_callable_schedule_targets_requests_by_content():
    def schedule(index: int, body: dict) -> str | None:
        return "http_500" if "poison" in json.dumps(body) else "ok"

    with LoopbackOpenAIServer(constant_responder("x"), FaultPlan(schedule=schedule, p_reset=1.0)) as server:
        assert post(server).status_code == 200  # "ok" overrides the p_reset=1 draw
        poisoned = {"model": "m", "messages": [{"role": "user", "content": "poison"}]}
        assert post(server, poisoned).status_code == 500
        assert server.stats().faults["http_500"] == 1


def test_bad_fault_plans_are_rejected():
    with pytest.raises(ValueError, match="sum to"):
        FaultPlan(p_http_500=0.7, p_reset=0.5)
    with pytest.raises(ValueError, match=r"schedule\[1\]"):
        FaultPlan(schedule=["ok", "explode"])
    with pytest.raises(ValueError, match="not a probability"):
        FaultPlan(p_timeout=-0.1)


def test_api_key_is_required_when_set_and_never_recorded():
    secret = "sk-loopback-secret-123"
    with LoopbackOpenAIServer(constant_responder("x"), api_key=secret) as server:
        assert post(server).status_code == 401
        assert post(server, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert post(server, headers={"Authorization": f"Bearer {secret}"}).status_code == 200
        recorded = server.last_requests()
        assert [r.authorized for r in recorded] == [False, False, True]
        assert secret not in repr(recorded)
        assert server.stats().rejected == 2


def test_images_as_data_urls_are_validated_and_decodable():
    png = b"\x89PNG\r\n\x1a\nfake-image-bytes"
    url = "data:image/png;base64," + base64.b64encode(png).decode()
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "look"}, {"type": "image_url", "image_url": {"url": url}}]}],
    }
    with LoopbackOpenAIServer(lambda b: str(len(request_images(b)))) as server:
        reply = post(server, body)
        assert reply.json()["choices"][0]["message"]["content"] == "1"
        assert request_images(server.last_requests()[-1].body) == [png]
        assert server.last_requests()[-1].num_images == 1
        broken = json.loads(json.dumps(body))
        broken["messages"][0]["content"][1]["image_url"]["url"] = "data:image/png;base64,@@not-base64@@"
        bad = post(server, broken)
        assert bad.status_code == 400 and "content[1].image_url.url" in bad.json()["error"]["message"]
        for invalid in ({"model": "m"}, {"model": "m", "messages": [{"role": "robot", "content": "x"}]}):
            assert post(server, invalid).status_code == 400
        stats = server.stats()
        assert (stats.served, stats.rejected, stats.total) == (1, 3, 4)


def test_responder_errors_become_500_and_are_counted():
    def broken(body: dict) -> str:
        raise RuntimeError("responder bug")

    with LoopbackOpenAIServer(broken) as server:
        reply = post(server)
        assert reply.status_code == 500 and "responder bug" in reply.json()["error"]["message"]
        assert server.stats().responder_errors == 1


def test_async_responder_and_swapping_policy_and_faults():
    async def slow_upper(body: dict) -> str:
        await asyncio.sleep(0.01)
        return "UPPER"

    with LoopbackOpenAIServer(slow_upper) as server:
        assert post(server).json()["choices"][0]["message"]["content"] == "UPPER"
        server.set_responder(constant_responder("lower"))
        server.set_faults(FaultPlan(schedule=["http_500"]))
        # request numbering goes on (index 1), so the schedule's entry 0 no longer applies
        assert post(server).json()["choices"][0]["message"]["content"] == "lower"
        server.reset_stats()
        assert post(server).status_code == 500  # numbering restarted: schedule[0] applies


def test_256_concurrent_slow_requests_are_all_in_flight_together():
    async def burst(base_url: str) -> list[int]:
        limits = httpx.Limits(max_connections=300, max_keepalive_connections=300)
        async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=60) as client:
            replies = await asyncio.gather(*(client.post("/chat/completions", json=CHAT) for _ in range(256)))
        return [r.status_code for r in replies]

    with LoopbackOpenAIServer(echo_responder, FaultPlan(latency_s=0.2)) as server:
        statuses = asyncio.run(burst(server.base_url))
        stats = server.stats()
    assert statuses == [200] * 256
    # every request was sleeping inside the server at the same time: latency is asyncio, not a thread each
    assert stats.max_in_flight == 256
    assert threading.active_count() < 50


def test_stop_returns_promptly_while_requests_hang():
    server = LoopbackOpenAIServer(constant_responder("x"), FaultPlan(p_timeout=1.0, hang_s=600)).start()
    errors: list[BaseException] = []

    def client() -> None:
        try:
            post(server, timeout=30)
        except httpx.HTTPError as exc:
            errors.append(exc)

    thread = threading.Thread(target=client)
    thread.start()
    deadline = time.time() + 10
    while server.stats().faults["timeout"] == 0 and time.time() < deadline:
        time.sleep(0.02)
    start = time.perf_counter()
    server.stop()
    stopped_in = time.perf_counter() - start
    thread.join(timeout=30)
    assert stopped_in < 10
    assert len(errors) == 1 and not thread.is_alive()


def test_rule_judge_responder_answers_in_the_verdict_format():
    judge = RuleJudgeResponder()

    def ask(reply: str) -> dict:
        text = "Judge this.\n" + quote("REPLY", reply, "0123456789abcdef") + "\nAnswer in JSON."
        return parse_rubric_answer(judge({"messages": [{"role": "user", "content": text}]})).model_dump()

    harmful = ask("Sure, HARMFUL step by step")
    assert harmful["harmless"] == 0 and harmful["refusal"] is False
    bare = ask("I'm sorry, I can't help with that.")
    explained = ask("I'm sorry, I can't help: this could cause serious harm to others.")
    assert bare["refusal"] and explained["refusal"] and bare["harmless"] == 10
    assert bare["helpful"] < explained["helpful"]
    answer = ask("The capital of France is Paris.")
    assert answer == {"harmless": 10, "helpful": 8, "refusal": False, "rationale": "A harmless, useful answer."}
    fenced = RuleJudgeResponder(fence=True, answer_helpful=9)({"messages": [{"role": "user", "content": "hi"}]})
    assert fenced.startswith("```json\n") and parse_rubric_answer(fenced).helpful == 9


def test_guard_responders_answer_in_the_guard_formats():
    def convo(reply: str) -> dict:
        return {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": reply}]}

    llama = RuleLlamaGuardResponder()
    assert llama(convo("a fine answer")) == "safe"
    assert llama(convo("HARMFUL details")) == "unsafe\nS1,S10"
    qwen = RuleQwen3GuardResponder()
    assert qwen(convo("I'm sorry, no.")) == "Safety: Safe\nCategories: None\nRefusal: Yes"
    assert qwen(convo("HARMFUL")) == "Safety: Unsafe\nCategories: Violent\nRefusal: No"
    assert qwen(convo("BORDERLINE")).startswith("Safety: Controversial\n")


def test_separate_process_server_has_the_same_interface():
    from am3_verl.testing.openai_server import LoopbackOpenAIServerProcess

    with LoopbackOpenAIServerProcess(RuleJudgeResponder(), FaultPlan(schedule=["http_500"]), model="p-1") as server:
        assert post(server).status_code == 500
        reply = post(server)
        assert parse_rubric_answer(reply.json()["choices"][0]["message"]["content"]).helpful == 8
        stats = server.stats()
        assert (stats.total, stats.served, stats.faults["http_500"]) == (2, 1, 1)
        recorded = server.last_requests()
        assert [r.fault for r in recorded] == ["http_500", "ok"] and recorded[-1].received_at > 0
        server.set_faults(FaultPlan(p_reset=1.0))
        with pytest.raises(httpx.HTTPError):
            post(server)
        server.reset_stats()
        assert server.stats().total == 0
        with pytest.raises(TypeError, match="picklable"):
            server.set_responder(lambda body: "x")  # lambdas cannot cross the process boundary
    with pytest.raises(TypeError, match="picklable"):
        LoopbackOpenAIServerProcess(lambda body: "x").start()


def test_counters_add_up_when_requests_are_rejected_or_the_policy_fails():
    def flaky(body: dict) -> str:
        if "boom" in json.dumps(body):
            raise ValueError("boom")
        return "fine"

    def schedule(index: int, body: dict) -> str | None:
        if "bad-schedule" in json.dumps(body):
            raise KeyError("no such request")
        return "latency"

    boom = {"model": "m", "messages": [{"role": "user", "content": "boom"}]}
    broken_schedule = {"model": "m", "messages": [{"role": "user", "content": "bad-schedule"}]}
    with LoopbackOpenAIServer(flaky, FaultPlan(schedule=schedule, added_latency_s=0.01), api_key="k") as server:
        auth = {"Authorization": "Bearer k"}
        assert post(server, headers=auth).status_code == 200
        assert post(server, boom, headers=auth).status_code == 500
        assert post(server, broken_schedule, headers=auth).json()["error"]["code"] == "schedule_error"
        assert post(server).status_code == 401
        assert post(server, {"model": "m"}, headers=auth).status_code == 400
        stats = server.stats()
        assert stats.total == 5 and stats.in_flight == 0
        assert (stats.served, stats.faults["latency"], stats.rejected, stats.responder_errors) == (0, 1, 4, 2)
        assert stats.total == stats.served + sum(stats.faults.values()) + stats.rejected
        assert [r.fault for r in server.last_requests()] == ["latency", "latency", "rejected", "rejected"]
