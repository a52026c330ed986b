"""The model under evaluation: an OpenAI-compatible endpoint or a local Hugging Face folder.

Both backends answer :meth:`ModelBackend.generate` for one conversation (optional system prompt, then
user/assistant messages, ending on the user message to answer) and return a :class:`Reply` that carries
either the text or the error; they never raise for model-side problems.

* :class:`OpenAIModel` – ``POST /chat/completions`` through the shared bounded, retrying
  :class:`~am3_verl.clients.chat.ChatClient` (the usual case: ``vllm serve <checkpoint>``). Images are
  sent as ``image_url`` data URLs, each at its ``<image>`` placeholder. The key, if any, comes from
  ``AM3_EVAL_API_KEY``.
* :class:`LocalHFModel` – a local ``AutoModelForImageTextToText`` folder run with ``transformers``'
  ``generate`` through :func:`am3_verl.local.generation.load_local_client`; the prompt is the
  processor's chat template with the images expanded by the processor.

:attr:`ModelBackend.identity` names the model and sampling parameters for the answer cache: the endpoint
URL is not part of it (a resumed run may reach the same served model on another port), so use a fresh
results folder when a different checkpoint is served under the same name.
"""

from __future__ import annotations

import asyncio
import io
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import httpx
from pydantic import ValidationError

from am3_verl.dialogue import IMAGE_PLACEHOLDER
from am3_verl.clients.chat import ChatClient
from am3_verl.clients.endpoint import EndpointConfig, strip_userinfo
from am3_verl.clients.structured import validation_problems
from am3_verl.clients.images import image_data_url

API_KEY_ENV = "AM3_EVAL_API_KEY"
"""Environment variable holding the model endpoint's API key (never logged)."""


@dataclass(frozen=True)
class Message:
    """One chat message: ``text`` with one ``<image>`` placeholder per entry of ``images`` (encoded bytes)."""

    role: Literal["system", "user", "assistant"]
    text: str
    images: tuple[bytes, ...] = ()


@dataclass(frozen=True)
class GenerationParams:
    """Sampling parameters of the model under evaluation."""

    temperature: float = 0.0
    """0 = greedy."""
    max_tokens: int = 512
    top_p: float = 1.0
    seed: int | None = 0
    """Sampling seed (sent to endpoints that accept one; seeds the local backend)."""

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


@dataclass
class Reply:
    """The model's answer to one conversation, or why there is none."""

    ok: bool
    text: str | None = None
    error: str | None = None


class ModelBackend(Protocol):
    """What the runner needs from a model."""

    identity: str
    """Model name/path plus sampling parameters: part of every answer-cache key."""

    def describe(self) -> str:
        """One log-safe line naming the model (no secrets)."""

    async def generate(self, messages: list[Message]) -> Reply:
        """Answer the last user message of ``messages``; never raises for model-side problems."""

    async def aclose(self) -> None:
        """Release resources held for the running event loop."""


def openai_content(message: Message) -> str | list[dict[str, Any]]:
    """The OpenAI ``content`` of ``message``: plain text, or text and ``image_url`` parts in placeholder order."""
    if not message.images:
        return message.text
    segments = message.text.split(IMAGE_PLACEHOLDER)
    if len(segments) - 1 != len(message.images):
        raise ValueError(f"{len(segments) - 1} {IMAGE_PLACEHOLDER} placeholder(s) but {len(message.images)} image(s)")
    parts: list[dict[str, Any]] = []
    for i, segment in enumerate(segments):
        if segment:
            parts.append({"type": "text", "text": segment})
        if i < len(message.images):
            parts.append({"type": "image_url", "image_url": {"url": image_data_url(message.images[i])}})
    return parts


class OpenAIModel:
    """The model behind an OpenAI-compatible chat endpoint."""

    def __init__(self, endpoint: EndpointConfig, params: GenerationParams) -> None:
        self.model = endpoint.model
        self.params = params
        self.client = ChatClient(endpoint, retry_parse_errors=False)
        self.identity = f"openai:{endpoint.model}:{_params_id(params)}"
        self._body: dict[str, Any] = {"temperature": params.temperature, "max_tokens": params.max_tokens, "top_p": params.top_p}
        if params.seed is not None:
            self._body["seed"] = params.seed

    def describe(self) -> str:
        """See :class:`ModelBackend`."""
        return self.client.endpoint.describe()

    async def generate(self, messages: list[Message]) -> Reply:
        """See :class:`ModelBackend`."""
        wire = [{"role": m.role, "content": openai_content(m)} for m in messages]
        result = await self.client.complete(wire, **self._body)
        if not result.ok:
            return Reply(False, error=f"{result.error_kind}: {result.error}")
        return Reply(True, text=result.content)

    async def aclose(self) -> None:
        """See :class:`ModelBackend`."""
        await self.client.aclose()


class LocalHFModel:
    """A local Hugging Face VLM folder, generating on this machine (CPU or GPU as torch places it)."""

    def __init__(self, path: str | Path, params: GenerationParams) -> None:
        from am3_verl.local.generation import load_local_client

        self.path = Path(path).resolve()
        self.params = params
        self.client = load_local_client(str(self.path), seed=params.seed, default_max_tokens=params.max_tokens)
        self.processor = self.client.processor
        self.identity = f"hf:{self.path}:{_params_id(params)}"
        self._calls = 0

    def describe(self) -> str:
        """See :class:`ModelBackend`."""
        return f"local model {self.path}"

    def _prompt(self, messages: list[Message]) -> tuple[list[int], list[Any]]:
        from PIL import Image

        chat, images = [], []
        for m in messages:
            parts: list[dict[str, Any]] = []
            segments = m.text.split(IMAGE_PLACEHOLDER)
            for i, segment in enumerate(segments):
                if segment:
                    parts.append({"type": "text", "text": segment})
                if i < len(m.images):
                    parts.append({"type": "image"})
                    images.append(Image.open(io.BytesIO(m.images[i])).convert("RGB"))
            chat.append({"role": m.role, "content": parts})
        text = self.processor.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
        inputs = self.processor(text=[text], images=images or None, return_tensors="pt")
        return inputs["input_ids"][0].tolist(), images

    async def generate(self, messages: list[Message]) -> Reply:
        """See :class:`ModelBackend`."""
        self._calls += 1
        try:
            prompt_ids, images = await asyncio.to_thread(self._prompt, messages)
            output = await self.client.generate(
                f"eval-{self._calls}",
                prompt_ids=prompt_ids,
                sampling_params={"temperature": self.params.temperature, "top_p": self.params.top_p, "max_tokens": self.params.max_tokens},
                image_data=images or None,
            )
        except Exception as exc:  # a model-side failure is this turn's error, not the run's
            return Reply(False, error=f"{type(exc).__name__}: {exc}")
        return Reply(True, text=self.client.tokenizer.decode(output.token_ids, skip_special_tokens=True))

    async def aclose(self) -> None:
        """See :class:`ModelBackend`."""


def _params_id(params: GenerationParams) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(asdict(params).items()))


def discover_model_name(base_url: str, api_key: str | None = None, timeout_s: float = 30.0) -> str:
    """The single model served at ``base_url`` (``GET /models``); raises ``ValueError`` if not exactly one."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        response = httpx.get(base_url.rstrip("/") + "/models", headers=headers, timeout=timeout_s)
        response.raise_for_status()
        names = [entry["id"] for entry in response.json()["data"]]
    except (httpx.HTTPError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(strip_userinfo(f"cannot list the models at {base_url} ({exc}); pass --model_name")) from None
    if len(names) != 1:
        raise ValueError(f"{strip_userinfo(base_url)} serves {len(names)} models ({', '.join(names)}); pass --model_name")
    return names[0]


def open_model(
    spec: str,
    params: GenerationParams,
    *,
    model_name: str | None = None,
    timeout_s: float | None = None,
    max_attempts: int | None = None,
    max_concurrency: int | None = None,
) -> ModelBackend:
    """``spec`` is an ``http(s)://.../v1`` endpoint or a local model folder; raises ``ValueError`` otherwise.

    For an endpoint, the settings left None take :class:`EndpointConfig`'s defaults; its key, if any, is
    read from ``AM3_EVAL_API_KEY``. The settings are checked before any request (listing the models)."""
    if spec.startswith(("http://", "https://")):
        api_key = os.environ.get(API_KEY_ENV) or None
        chosen = {"timeout_s": timeout_s, "max_attempts": max_attempts, "max_concurrency": max_concurrency}
        settings = {k: v for k, v in chosen.items() if v is not None}

        def endpoint(name: str) -> EndpointConfig:
            try:
                return EndpointConfig(base_url=spec, model=name, api_key_env=API_KEY_ENV if api_key else None, **settings)
            except ValidationError as exc:
                raise ValueError(f"--model {strip_userinfo(spec)}: {validation_problems(exc)}") from None

        endpoint(model_name or "unnamed")  # bad settings (credentials in the URL and a key) fail before any request
        return OpenAIModel(endpoint(model_name or discover_model_name(spec, api_key)), params)
    path = Path(spec)
    if not path.is_dir():
        raise ValueError(f"--model {spec!r} is neither an http(s):// endpoint nor a model folder")
    if not (path / "config.json").is_file():
        raise ValueError(f"--model {spec!r} has no config.json: not a Hugging Face model folder")
    return LocalHFModel(path, params)
