"""A bounded, retrying client for OpenAI-images-compatible text-to-image endpoints.

``POST {base_url}/images/generations`` with ``{"model", "prompt", "n": 1, "size", "response_format":
"b64_json"}``; the answer's ``data[0].b64_json`` is decoded and the image fully decoded and size-checked
(:func:`am3_verl.data.images.prepare_image`) before it is accepted. Timeouts, connection errors, HTTP
408/409/429/5xx, bodies that are not JSON, answers without ``data[0].b64_json`` and images that do not
decode are retried with exponential backoff and jitter (tenacity); other 4xx fail at once. Like the chat
client it returns results (:class:`ImageResult`), never raises for endpoint problems, and keeps the API
key out of reprs and logs.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from am3_verl.builder.config import TextToImageConfig
from am3_verl.data.images import ImagePolicy, prepare_image
from am3_verl.clients.images import sniff_mime

logger = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({408, 409, 429})


@dataclass
class ImageResult:
    """The outcome of one :meth:`ImagesClient.generate` call (all attempts)."""

    ok: bool
    data: bytes | None = None
    """The encoded image as the endpoint sent it (PNG, JPEG, ...)."""
    error: str | None = None
    error_kind: str | None = None
    attempts: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    elapsed_s: float = 0.0


class _Attempt(Exception):
    def __init__(self, kind: str, message: str, retryable: bool) -> None:
        super().__init__(message)
        self.kind = kind
        self.retryable = retryable


class _Retry(_Attempt):
    pass


def _fail(kind: str, message: str, retryable: bool = True) -> _Attempt:
    return (_Retry if retryable else _Attempt)(kind, message, retryable)


class ImagesClient:
    """Draws images from text prompts; safe to share across concurrent tasks of one event loop."""

    def __init__(self, config: TextToImageConfig, api_key: str | None = None, policy: ImagePolicy = ImagePolicy()) -> None:
        if not config.enabled or not config.base_url or not config.model:
            raise ValueError("ImagesClient needs an enabled text_to_image config with base_url and model")
        self.config = config
        self.model = config.model
        self._api_key = api_key
        self._policy = policy
        self._url = config.base_url.rstrip("/") + "/images/generations"
        self._client: httpx.AsyncClient | None = None
        self._semaphore: asyncio.Semaphore | None = None
        self._backoff = wait_exponential_jitter(
            multiplier=config.backoff_initial_s, max=config.backoff_max_s, jitter=config.backoff_initial_s
        )

    def __repr__(self) -> str:
        return f"ImagesClient(url={self._url!r}, model={self.model!r})"

    def request_body(self, prompt: str) -> dict:
        """The JSON body sent for ``prompt``."""
        body: dict = {"model": self.model, "prompt": prompt, "n": 1, **self.config.extra_params}
        if self.config.size:
            body["size"] = self.config.size
        if self.config.send_response_format:
            body["response_format"] = "b64_json"
        return body

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
            self._client = httpx.AsyncClient(
                headers=headers,
                timeout=httpx.Timeout(self.config.timeout_s, connect=min(10.0, self.config.timeout_s)),
                limits=httpx.Limits(max_connections=self.config.max_concurrency + 2),
            )
            self._semaphore = asyncio.Semaphore(self.config.max_concurrency)
        return self._client

    async def aclose(self) -> None:
        """Close the connection pool (a later call opens a new one)."""
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def generate(self, prompt: str) -> ImageResult:
        """Draw one image for ``prompt`` (retrying as configured)."""
        body = self.request_body(prompt)
        failures: Counter[str] = Counter()
        attempts = 0
        start = time.perf_counter()
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.config.max_attempts),
            wait=self._backoff,
            retry=retry_if_exception_type(_Retry),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    attempts += 1
                    try:
                        data = await self._attempt(body)
                    except _Attempt as exc:
                        failures[exc.kind] += 1
                        logger.debug("image attempt %d to %s failed (%s): %s", attempts, self._url, exc.kind, exc)
                        raise
                    return ImageResult(True, data, None, None, attempts, dict(failures), time.perf_counter() - start)
        except _Attempt as exc:
            logger.warning("image request to %s failed after %d attempt(s): %s: %s", self._url, attempts, exc.kind, str(exc)[:300])
            return ImageResult(False, None, str(exc), exc.kind, attempts, dict(failures), time.perf_counter() - start)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _attempt(self, body: dict) -> bytes:
        client = self._http()
        assert self._semaphore is not None
        async with self._semaphore:
            try:
                response = await client.post(self._url, json=body)
            except httpx.TimeoutException:
                raise _fail("timeout", f"no answer within {self.config.timeout_s:g} s") from None
            except httpx.ConnectError as exc:
                raise _fail("connect", f"cannot connect: {exc}") from None
            except httpx.TransportError as exc:
                raise _fail("network", f"{type(exc).__name__}: {exc}") from None
        return self._image_of(response)

    def _image_of(self, response: httpx.Response) -> bytes:
        status = response.status_code
        if status >= 400:
            detail = response.text[:300]
            if status >= 500:
                raise _fail("http_5xx", f"HTTP {status}: {detail}")
            if status == 429:
                raise _fail("http_429", f"HTTP 429: {detail}")
            raise _fail("http_4xx", f"HTTP {status}: {detail}", status in RETRYABLE_STATUS)
        try:
            payload = json.loads(response.content)
        except (ValueError, UnicodeDecodeError):
            raise _fail("invalid_json", f"response body is not JSON: {response.text[:200]!r}") from None
        try:
            item = payload["data"][0]
        except (KeyError, IndexError, TypeError):
            raise _fail("bad_response", f"response has no data[0]: {str(payload)[:200]}") from None
        b64 = item.get("b64_json") if isinstance(item, dict) else None
        if not isinstance(b64, str):
            has_url = isinstance(item, dict) and "url" in item
            raise _fail(
                "bad_response",
                "the endpoint answered with a URL, not b64_json; enable text_to_image.send_response_format"
                if has_url else f"data[0] has no b64_json: {str(item)[:200]}",
                retryable=not has_url,
            )
        try:
            data = base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise _fail("bad_image", f"b64_json is not valid base64: {exc}") from None
        try:
            sniff_mime(data)
            prepare_image(data, self._policy)
        except ValueError as exc:  # ImageCheckError is a ValueError
            raise _fail("bad_image", str(exc)) from None
        return data
