"""The generic chat client against the loopback server: retries per fault kind, limits, timeouts, results."""

from __future__ import annotations

import asyncio
import json

import pytest

from am3_verl.clients.chat import ChatClient
from am3_verl.clients.endpoint import EndpointConfig, endpoint_limiter
from am3_verl.testing.openai_server import FaultPlan, LoopbackOpenAIServer, constant_responder, echo_responder

MESSAGES = [{"role": "user", "content": "ping"}]


def client_for(server: LoopbackOpenAIServer, retry_parse_errors: bool = True, sleep=None, **overrides) -> ChatClient:
    settings = dict(base_url=server.base_url, model="m", timeout_s=2.0, backoff_initial_s=0.01, backoff_max_s=0.05)
    settings.update(overrides)
    extra = {} if sleep is None else {"sleep": sleep}
    return ChatClient(EndpointConfig(**settings), retry_parse_errors=retry_parse_errors, **extra)


def complete(client: ChatClient, messages=MESSAGES, **kw):
    async def go():
        try:
            return await client.complete(messages, **kw)
        finally:
            await client.aclose()

    return asyncio.run(go())


def test_success_returns_content_and_sends_the_request_body():
    with LoopbackOpenAIServer(echo_responder) as server:
        result = complete(client_for(server), temperature=0.0, max_tokens=7)
        assert result.ok and result.content == "ping" and result.attempts == 1 and result.failures == {}
        assert result.usage.prompt_tokens > 0 and result.usage.completion_tokens > 0
        body = server.last_requests()[-1].body
        assert body == {"model": "m", "messages": MESSAGES, "temperature": 0.0, "max_tokens": 7}


@pytest.mark.parametrize(
    "fault,kind",
    [
        ("http_500", "http_5xx"),
        ("http_429", "http_429"),
        ("reset", "network"),
        ("invalid_json", "invalid_json"),
        ("no_choices", "bad_response"),
        ("timeout", "timeout"),
    ],
)
def test_each_fault_kind_is_retried_and_counted(fault, kind):
    plan = FaultPlan(schedule=[fault, fault, "ok"], hang_s=30)
    with LoopbackOpenAIServer(constant_responder("fine"), plan) as server:
        result = complete(client_for(server, timeout_s=0.3))
        assert result.ok and result.content == "fine"
        assert result.attempts == 3
        assert result.failures == {kind: 2}
        assert server.stats().total == 3


def test_added_latency_is_waited_out_not_retried():
    with LoopbackOpenAIServer(constant_responder("slow"), FaultPlan(schedule=["latency"], added_latency_s=0.3)) as server:
        result = complete(client_for(server, timeout_s=2.0))
        assert result.ok and result.attempts == 1 and result.content == "slow"
        assert server.stats().faults["latency"] == 1 and server.stats().total == 1


def test_exhausted_retries_return_a_failed_result_with_counts():
    with LoopbackOpenAIServer(constant_responder("x"), FaultPlan(p_http_500=1.0)) as server:
        result = complete(client_for(server, max_attempts=3))
        assert not result.ok and result.content is None
        assert result.error_kind == "http_5xx" and "HTTP 500" in result.error
        assert result.attempts == 3 and result.failures == {"http_5xx": 3}
        assert server.stats().total == 3


def test_client_errors_are_not_retried(monkeypatch):
    with LoopbackOpenAIServer(constant_responder("x"), api_key="right-key") as server:
        monkeypatch.setenv("AM3_TEST_CHAT_KEY", "wrong-key")
        result = complete(client_for(server, api_key_env="AM3_TEST_CHAT_KEY"))
        assert not result.ok and result.error_kind == "http_4xx" and result.attempts == 1
        assert "401" in result.error
        monkeypatch.setenv("AM3_TEST_CHAT_KEY", "right-key")
        good = complete(client_for(server, api_key_env="AM3_TEST_CHAT_KEY"))
        assert good.ok
        monkeypatch.delenv("AM3_TEST_CHAT_KEY")
        with pytest.raises(ValueError, match="AM3_TEST_CHAT_KEY, which is not set"):
            client_for(server, api_key_env="AM3_TEST_CHAT_KEY")


def test_bad_request_body_is_a_4xx_failure_without_retry():
    with LoopbackOpenAIServer(constant_responder("x")) as server:
        result = complete(client_for(server), messages=[{"role": "wizard", "content": "x"}])
        assert not result.ok and result.error_kind == "http_4xx" and result.attempts == 1


def test_parse_errors_are_retried_then_reported():
    def parse(content: str) -> int:
        return int(content)  # ValueError on non-integers

    answers = iter(["not a number", "42"])
    with LoopbackOpenAIServer(lambda body: next(answers)) as server:
        result = complete(client_for(server), parse=parse)
        assert result.ok and result.value == 42 and result.failures == {"parse": 1}
        assert result.usage.completion_tokens > 0  # the rejected answer's tokens are counted too
    with LoopbackOpenAIServer(constant_responder("never a number")) as server:
        result = complete(client_for(server, max_attempts=2), parse=parse)
        assert not result.ok and result.error_kind == "parse" and result.failures == {"parse": 2}
    with LoopbackOpenAIServer(constant_responder("never a number")) as server:
        result = complete(client_for(server, retry_parse_errors=False), parse=parse)
        assert not result.ok and result.attempts == 1


def test_retry_after_header_is_honoured():
    waits: list[float] = []

    async def record(seconds: float) -> None:
        waits.append(seconds)

    plan = FaultPlan(schedule=["http_429", "ok"], retry_after_s=0.4)
    with LoopbackOpenAIServer(constant_responder("x"), plan) as server:
        result = complete(client_for(server, backoff_max_s=1.0, sleep=record))
        assert result.ok and result.attempts == 2 and len(waits) == 1 and 0.4 <= waits[0] <= 1.0
    plan = FaultPlan(schedule=["http_429", "ok"], retry_after_s=30.0)
    with LoopbackOpenAIServer(constant_responder("x"), plan) as server:
        waits.clear()
        assert complete(client_for(server, backoff_max_s=1.0, sleep=record)).ok
        assert waits == [1.0]  # a Retry-After beyond backoff_max_s is capped


def test_backoff_doubles_with_jitter_up_to_the_cap_and_no_wait_follows_the_last_attempt():
    waits: list[float] = []

    async def record(seconds: float) -> None:
        waits.append(seconds)

    plan = FaultPlan(schedule=["http_500"] * 4)
    with LoopbackOpenAIServer(constant_responder("x"), plan) as server:
        client = client_for(server, max_attempts=4, backoff_initial_s=0.1, backoff_max_s=0.3, sleep=record)
        result = complete(client)
    assert not result.ok and result.attempts == 4 and result.failures == {"http_5xx": 4}
    # initial * 2 ** (attempt - 1) plus jitter in [0, initial), capped at backoff_max_s
    assert len(waits) == 3 and 0.1 <= waits[0] < 0.2 and 0.2 <= waits[1] <= 0.3 and waits[2] == 0.3


def test_connection_refused_is_a_connect_failure():
    server = LoopbackOpenAIServer(constant_responder("x")).start()
    url = server.base_url
    server.stop()  # nothing listens on the port any more
    result = complete(ChatClient(EndpointConfig(base_url=url, model="m", max_attempts=2, backoff_initial_s=0.01)))
    assert not result.ok and result.error_kind == "connect" and result.failures == {"connect": 2}


def test_concurrency_is_bounded_per_process_across_clients_of_an_endpoint():
    async def burst(clients: list[ChatClient], n: int) -> list:
        results = await asyncio.gather(*(clients[i % len(clients)].complete(MESSAGES) for i in range(n)))
        for c in clients:
            await c.aclose()
        return results

    with LoopbackOpenAIServer(constant_responder("x"), FaultPlan(latency_s=0.1)) as server:
        shared = [client_for(server, max_concurrency=8) for _ in range(2)]
        results = asyncio.run(burst(shared, 48))
        assert all(r.ok for r in results)
        assert server.stats().max_in_flight == 8
        server.reset_stats()
        separate = [client_for(server, max_concurrency=8, model=f"m{i}") for i in range(2)]  # two endpoints
        asyncio.run(burst(separate, 48))
        assert server.stats().max_in_flight == 16


def test_an_endpoint_cannot_have_two_limits():
    async def go():
        endpoint_limiter(EndpointConfig(base_url="http://x/v1", model="m", max_concurrency=4))
        endpoint_limiter(EndpointConfig(base_url="http://x/v1/", model="m", max_concurrency=4))
        endpoint_limiter(EndpointConfig(base_url="http://x/v1", model="other", max_concurrency=5))
        with pytest.raises(ValueError, match="already has max_concurrency 4"):
            endpoint_limiter(EndpointConfig(base_url="http://x/v1", model="m", max_concurrency=5))

    asyncio.run(go())


def test_one_session_per_loop_reused_across_calls():
    with LoopbackOpenAIServer(constant_responder("x")) as server:
        client = client_for(server)

        async def go():
            first = await client.transport._session()
            await asyncio.gather(*(client.complete(MESSAGES) for _ in range(20)))
            assert await client.transport._session() is first
            return first

        session_a = asyncio.run(go())
        session_b = asyncio.run(go())
        assert session_a is not session_b
        assert session_a.closed and session_b.closed  # asyncio.run closed each loop's session


def test_lazy_messages_are_built_once_across_retries():
    calls = []

    def build():
        calls.append(1)
        return MESSAGES

    with LoopbackOpenAIServer(constant_responder("x"), FaultPlan(schedule=["http_500", "ok"])) as server:
        result = complete(client_for(server), messages=build)
        assert result.ok and len(calls) == 1
        assert [json.dumps(r.body) for r in server.last_requests()] == [json.dumps({"model": "m", "messages": MESSAGES})] * 2


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="base_url"):
        EndpointConfig(base_url="localhost:8000", model="m")
    with pytest.raises(ValueError, match="max_attempts"):
        EndpointConfig(base_url="http://x/v1", model="m", max_attempts=0)
    with pytest.raises(ValueError, match="max_concurrency"):
        EndpointConfig(base_url="http://x/v1", model="m", max_concurrency=0)
    with pytest.raises(ValueError, match="api_key_env"):
        EndpointConfig(base_url="http://x/v1", model="m", api_key="secret")


def test_per_loop_state_of_finished_loops_is_dropped():
    with LoopbackOpenAIServer(constant_responder("x")) as server:
        client = client_for(server)
        for _ in range(3):
            assert asyncio.run(client.complete(MESSAGES)).ok  # no aclose: asyncio.run closes the session
        assert len(client.transport._sessions) == 1  # only the last loop's entry survives
