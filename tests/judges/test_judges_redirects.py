"""Redirects: a POST (the dialogue, the key) is never re-sent to another origin; same-origin 307/308 are followed."""

from __future__ import annotations


import pytest

from am3_verl.clients.endpoint import EndpointConfig
from am3_verl.testing.openai_server import FaultPlan, LoopbackOpenAIServer, constant_responder
from judge_helpers import complete_once

MESSAGES = [{"role": "user", "content": "a private dialogue turn"}]
KEY = "sk-redirect-test-0123456789"


def complete(endpoint: EndpointConfig):
    return complete_once(endpoint, MESSAGES)[0]


def endpoint_of(server: LoopbackOpenAIServer, **overrides) -> EndpointConfig:
    settings = dict(base_url=server.base_url, model="m", max_attempts=3, backoff_initial_s=0.01, backoff_max_s=0.05, timeout_s=5.0)
    return EndpointConfig(**{**settings, **overrides})


@pytest.mark.parametrize("status", [307, 308, 301, 302, 303])
def test_a_redirect_to_another_origin_fails_at_once_and_sends_nothing_there(status, monkeypatch):
    monkeypatch.setenv("AM3_TEST_REDIRECT_KEY", KEY)
    with LoopbackOpenAIServer(constant_responder("the other origin answered")) as elsewhere:
        target = elsewhere.base_url + "/chat/completions"
        origin = f"http://127.0.0.1:{elsewhere.port}"
        plan = FaultPlan(redirect=lambda index, body: (status, target))
        with LoopbackOpenAIServer(constant_responder("never"), plan, api_key=KEY) as redirector:
            result = complete(endpoint_of(redirector, api_key_env="AM3_TEST_REDIRECT_KEY"))
            asked = redirector.stats()
        received = elsewhere.stats()
    assert received.total == 0 and received.models_requests == 0  # nothing, not even without the body
    assert asked.total == 1 and asked.redirected == 1  # not retried: retrying cannot change where it points
    assert not result.ok and result.error_kind == "redirect" and result.attempts == 1
    assert origin in result.error and f"HTTP {status}" in result.error
    assert KEY not in result.error


def test_a_same_origin_307_is_followed_with_the_body():
    plan = FaultPlan(redirect=lambda index, body: (307, "/v1/chat/completions") if index == 0 else None)
    with LoopbackOpenAIServer(constant_responder("moved, answered"), plan) as server:
        result = complete(endpoint_of(server))
        bodies = [r.body for r in server.last_requests()]
        stats = server.stats()
    assert result.ok and result.content == "moved, answered" and result.attempts == 1
    assert stats.total == 2 and stats.redirected == 1 and bodies[0] == bodies[1] == {"model": "m", "messages": MESSAGES}


def test_a_same_origin_redirect_loop_ends_as_a_redirect_failure():
    with LoopbackOpenAIServer(constant_responder("x"), FaultPlan(redirect=lambda index, body: (308, "/v1/chat/completions"))) as server:
        result = complete(endpoint_of(server))
        stats = server.stats()
    assert not result.ok and result.error_kind == "redirect" and result.attempts == 1
    assert "redirect" in result.error and 2 <= stats.total <= 10
