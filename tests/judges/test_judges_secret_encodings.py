"""A key a server echoes back, in any of the encodings servers use, never survives into results or logs;
credentials in a URL never reach a log line or an error, and cannot be combined with a key."""

from __future__ import annotations

import base64
import logging

import pytest

from am3_verl.clients.endpoint import EndpointConfig
from am3_verl.clients.redaction import redact
from am3_verl.judges.config import resolve_judge_config
from am3_verl.testing.openai_server import FaultPlan, LoopbackOpenAIServer, constant_responder
from secret_oracle import ENCODINGS, readable_pieces
from judge_helpers import complete_once

SECRET = "sk-am3/t0k+en&7f3a9c1e5b2d"
KEY_ENV = "AM3_TEST_ENCODED_KEY"
MESSAGES = [{"role": "user", "content": "hello"}]


def complete(endpoint: EndpointConfig):
    return complete_once(endpoint, MESSAGES)


def test_the_oracle_sees_every_encoding():
    """The check below is meaningful: each encoded form, unredacted, does show the key."""
    for name, encode in ENCODINGS.items():
        assert readable_pieces(f"invalid key {encode(SECRET)}", SECRET), name


@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
def test_a_key_echoed_in_an_error_body_is_redacted_in_every_encoding(encoding, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv(KEY_ENV, SECRET)
    encode = ENCODINGS[encoding]

    def echo(headers) -> str:
        key = headers["Authorization"].removeprefix("Bearer ")
        return '{"error": {"message": "invalid key ' + encode(key) + ' (check it)", "type": "server_error"}}'

    with LoopbackOpenAIServer(constant_responder("x"), FaultPlan(p_http_500=1.0, error_body=echo), api_key=SECRET) as server:
        result, client = complete(EndpointConfig(base_url=server.base_url, model="m", api_key_env=KEY_ENV, max_attempts=1))
        assert server.stats().faults["http_500"] == 1  # the request was authorised, the key echoed
    assert not result.ok and result.error_kind == "http_5xx"
    assert "invalid key " in result.error and "***" in result.error and "(check it)" in result.error
    for where, text in {"error": result.error, "logs": caplog.text, "result": repr(result)}.items():
        assert encode(SECRET) not in text, where
        assert readable_pieces(text, SECRET) == [], f"{encoding}: the key can be read back from the {where}: {text!r}"


@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
def test_a_key_echoed_in_an_answer_is_redacted_in_every_encoding(encoding, monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    answer = f"your key is {ENCODINGS[encoding](SECRET)}, keep it safe"
    with LoopbackOpenAIServer(constant_responder(answer), api_key=SECRET) as server:
        result, _ = complete(EndpointConfig(base_url=server.base_url, model="m", api_key_env=KEY_ENV, max_attempts=1))
    assert result.ok and result.content.startswith("your key is ") and result.content.endswith(", keep it safe")
    assert readable_pieces(result.content, SECRET) == [], result.content


def test_redaction_leaves_text_without_the_key_alone():
    text = 'HTTP 500: {"error": "a \\u0041 &amp; %2F c2stYW0z and sk-am3/other"}'
    assert redact(text, SECRET) == text
    assert redact(f"<{SECRET}>", SECRET) == "<***>"


def test_short_base64_pieces_of_a_key_are_not_matched_in_ordinary_text():
    """Only the part of a base64 form that spells most of the key is matched, never a few characters."""
    text = "The answer is " + base64.b64encode(b"unrelated").decode() + " and more words."
    assert redact(text, SECRET) == text


# ------------------------------------------------------------------------------------------- URL credentials
USER, PASSWORD = "am3user", "url-pass-4b7e9d2c1a"


def _with_userinfo(base_url: str) -> str:
    return base_url.replace("http://", f"http://{USER}:{PASSWORD}@")


def test_credentials_in_a_url_never_reach_logs_errors_or_reprs(caplog):
    caplog.set_level(logging.DEBUG)

    def echo(headers) -> str:  # the server quotes the Basic credentials it was shown
        return '{"error": {"message": "bad credentials ' + headers.get("Authorization", "") + '"}}'

    with LoopbackOpenAIServer(constant_responder("x"), FaultPlan(p_http_500=1.0, error_body=echo)) as server:
        endpoint = EndpointConfig(base_url=_with_userinfo(server.base_url), model="m", max_attempts=2, backoff_initial_s=0.01)
        result, client = complete(endpoint)
        recorded, port = server.stats(), server.port
    assert recorded.total == 2 and not result.ok and result.error_kind == "http_5xx"
    assert "bad credentials Basic " in result.error  # the credentials were sent, as Basic auth
    texts = {
        "error": result.error,
        "logs": caplog.text,
        "describe": endpoint.describe(),
        "reprs": repr(endpoint) + repr(client) + repr(client.transport) + repr(result),
    }
    for where, text in texts.items():
        assert USER not in text and PASSWORD not in text, f"URL credentials leaked into the {where}: {text}"
        assert readable_pieces(text, PASSWORD) == [], where
    assert endpoint.describe() == f"m at http://127.0.0.1:{port}/v1"


def test_url_credentials_and_a_key_variable_are_refused_at_config_time(monkeypatch):
    with pytest.raises(ValueError, match="api_key_env") as refused:
        EndpointConfig(base_url=f"http://{USER}:{PASSWORD}@host:8000/v1", model="m", api_key_env="SOME_KEY_VARIABLE")
    message = str(refused.value)
    assert "SOME_KEY_VARIABLE" in message and "user:password@" in message
    assert PASSWORD not in message and USER not in message
    monkeypatch.setenv("AM3_JUDGE_API_KEY", SECRET)
    with pytest.raises(ValueError, match="api_key_env") as refused:
        resolve_judge_config({"backend": "openai", "base_url": f"http://{USER}:{PASSWORD}@host/v1", "model": "j"})
    assert PASSWORD not in str(refused.value) and SECRET not in str(refused.value)


def test_a_bad_url_is_refused_without_echoing_its_credentials():
    with pytest.raises(ValueError) as refused:
        EndpointConfig(base_url=f"ftp://{USER}:{PASSWORD}@host/v1", model="m")
    assert "http://" in str(refused.value) and PASSWORD not in str(refused.value)
