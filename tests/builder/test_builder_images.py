"""The text-to-image client against the loopback images server: the OpenAI images protocol, retries of
every transient fault, immediate failure on client errors, and the API key only in the header."""

from __future__ import annotations

import asyncio
import io
import socket

from PIL import Image


from am3_verl.builder.config import TextToImageConfig
from am3_verl.builder.images_client import ImagesClient
from am3_verl.clients.endpoint import EndpointConfig
from am3_verl.testing.builder_loopback import ImagesFaultPlan, LoopbackImagesServer


def _client(url: str, api_key_env: str | None = None, max_attempts: int = 6, **kw) -> ImagesClient:
    endpoint = EndpointConfig(
        base_url=url,
        model="stub-image",
        api_key_env=api_key_env,
        max_attempts=max_attempts,
        backoff_initial_s=0.01,
        backoff_max_s=0.02,
        timeout_s=5,
    )
    return ImagesClient(endpoint, TextToImageConfig(**{"enabled": True, "endpoint": "painter", "size": "256x256", **kw}))


def _generate(client: ImagesClient, prompt: str):
    async def run():
        try:
            return await client.generate(prompt)
        finally:
            await client.aclose()

    return asyncio.run(run())


def test_generation_speaks_the_openai_images_protocol(images_server):
    result = _generate(_client(images_server.base_url, extra_params={"quality": "low"}), "a red door")
    assert result.ok and result.attempts == 1 and result.failures == {}
    assert Image.open(io.BytesIO(result.value)).size == (192, 192)
    body = images_server.requests()[-1]
    assert body == {
        "model": "stub-image",
        "prompt": "a red door",
        "n": 1,
        "size": "256x256",
        "response_format": "b64_json",
        "quality": "low",
    }
    plain = _client(images_server.base_url, size=None, send_response_format=False)
    assert plain.request_body("x") == {"model": "stub-image", "prompt": "x", "n": 1}


def test_every_transient_fault_is_retried_and_counted():
    faults = ImagesFaultPlan(schedule=["http_500", "http_429", "invalid_json", "no_data", "bad_image", "ok"])
    with LoopbackImagesServer(faults=faults) as server:
        result = _generate(_client(server.base_url), "a bridge")
        assert result.ok and result.attempts == 6
        assert result.failures == {"http_5xx": 1, "http_429": 1, "invalid_json": 1, "bad_response": 1, "bad_image": 1}
        assert server.stats().total == 6 and server.stats().served == 1


def test_attempts_run_out_and_client_errors_fail_at_once():
    with LoopbackImagesServer(faults=ImagesFaultPlan(schedule=lambda i, body: "http_500")) as server:
        result = _generate(_client(server.base_url, max_attempts=3), "x")
        assert not result.ok and result.attempts == 3 and result.error_kind == "http_5xx"
    with LoopbackImagesServer(faults=ImagesFaultPlan(schedule=lambda i, body: "http_400")) as server:
        result = _generate(_client(server.base_url), "x")
        assert not result.ok and result.attempts == 1 and result.error_kind == "http_4xx"
    with LoopbackImagesServer(faults=ImagesFaultPlan(schedule=lambda i, body: "url_only")) as server:
        result = _generate(_client(server.base_url), "x")
        assert not result.ok and result.attempts == 1 and "send_response_format" in result.error


def test_an_unreachable_endpoint_fails_with_connect_errors():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = _generate(_client(f"http://127.0.0.1:{port}/v1", max_attempts=2), "x")
    assert not result.ok and result.failures == {"connect": 2}


def test_the_key_goes_only_into_the_authorization_header(monkeypatch):
    key = "sk-image-key-987654321"
    monkeypatch.setenv("AM3_TEST_IMAGES_KEY", key)
    with LoopbackImagesServer(api_key=key) as server:
        client = _client(server.base_url, api_key_env="AM3_TEST_IMAGES_KEY")
        assert key not in repr(client)
        assert _generate(client, "x").ok
        refused = _generate(_client(server.base_url), "x")
        assert not refused.ok and refused.error_kind == "http_4xx" and refused.attempts == 1
        assert all(key not in str(body) for body in server.requests())
