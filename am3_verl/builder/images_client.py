"""The client for OpenAI-images-compatible text-to-image endpoints, on the shared transport.

``POST {base_url}/images/generations`` with ``{"model", "prompt", "n": 1, "size", "response_format":
"b64_json"}``; the answer's ``data[0].b64_json`` is decoded and the image fully decoded and size-checked
(:func:`am3_verl.data.images.prepare_image`) before it is accepted. Retries, failure kinds, the
concurrency limit, token usage and the key's handling are :class:`~am3_verl.clients.transport.Transport`'s;
answers without ``data[0].b64_json`` (``bad_response``) and images that do not decode (``bad_image``)
are retried too, except an answer with a URL instead of b64 (a setting to fix, not a transient fault).
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from am3_verl.builder.config import BuilderConfig, BuilderError, TextToImageConfig
from am3_verl.clients.endpoint import EndpointConfig
from am3_verl.clients.images import sniff_mime
from am3_verl.clients.transport import Failure, Result, Transport
from am3_verl.data.images import ImagePolicy, prepare_image

ImageResult = Result
"""The outcome of :meth:`ImagesClient.generate`: ``value`` is the encoded image as the endpoint sent it."""


class ImagesClient:
    """Draws images from text prompts; safe to share across concurrent tasks of one event loop."""

    def __init__(self, endpoint: EndpointConfig, config: TextToImageConfig, policy: ImagePolicy = ImagePolicy()) -> None:
        self.endpoint = endpoint
        self.config = config
        self.model = endpoint.model
        self._policy = policy
        self.transport = Transport(endpoint, "/images/generations")

    def __repr__(self) -> str:
        return f"ImagesClient({self.transport.url!r}, model={self.model!r})"

    def request_body(self, prompt: str) -> dict[str, Any]:
        """The JSON body sent for ``prompt``."""
        body: dict[str, Any] = {"model": self.model, "prompt": prompt, "n": 1, **self.config.extra_params}
        if self.config.size:
            body["size"] = self.config.size
        if self.config.send_response_format:
            body["response_format"] = "b64_json"
        return body

    async def generate(self, prompt: str) -> Result[bytes]:
        """Draw one image for ``prompt`` (retrying as configured); never raises for endpoint problems."""
        return await self.transport.call(lambda: self.request_body(prompt), self._image_of)

    async def aclose(self) -> None:
        """Close this loop's connection pool (a later call opens a new one)."""
        await self.transport.aclose()

    def _image_of(self, answer: dict[str, Any]) -> tuple[bytes, None]:
        try:
            item = answer["data"][0]
        except (KeyError, IndexError, TypeError):
            raise Failure("bad_response", f"response has no data[0]: {str(answer)[:200]}") from None
        b64 = item.get("b64_json") if isinstance(item, dict) else None
        if not isinstance(b64, str):
            has_url = isinstance(item, dict) and "url" in item
            raise Failure(
                "bad_response",
                "the endpoint answered with a URL, not b64_json; enable text_to_image.send_response_format"
                if has_url
                else f"data[0] has no b64_json: {str(item)[:200]}",
                retryable=not has_url,
            )
        try:
            data = base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise Failure("bad_image", f"b64_json is not valid base64: {exc}") from None
        try:
            sniff_mime(data)
            prepare_image(data, self._policy)
        except ValueError as exc:  # ImageCheckError is a ValueError
            raise Failure("bad_image", str(exc)) from None
        return data, None


def open_images_client(config: BuilderConfig) -> ImagesClient | None:
    """The text-to-image client of ``config`` (None when disabled); :class:`BuilderError` for an unset key."""
    t2i = config.text_to_image
    if not t2i.enabled or t2i.endpoint is None:
        return None
    try:
        return ImagesClient(config.endpoints[t2i.endpoint], t2i)
    except ValueError as exc:
        raise BuilderError(f"endpoints.{t2i.endpoint} (text_to_image): {exc}") from None
