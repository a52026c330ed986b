"""Judge configuration: reward kwargs plus environment variables, resolved into a :class:`JudgeConfig`,
and :func:`build_judge` / :func:`get_judge` to turn it into a (process-wide, reused) judge.

Sources, highest precedence first: explicit keyword arguments (verl's
``+reward.custom_reward_function.reward_kwargs.<k>=<v>``), then environment variables, then defaults.
API keys come from the environment only (``AM3_JUDGE_API_KEY``, ``AM3_GUARD_API_KEY``): a key given
as a keyword argument is refused, because config values end up in logs.

Backends (``backend``):

* ``heuristic`` – offline keyword judge;
* ``openai`` – the rubric VLM judge at ``base_url`` / ``model``;
* ``llama_guard4`` / ``qwen3guard`` – a guard at ``guard_base_url`` / ``guard_model`` for harmlessness,
  combined with ``helpfulness_backend`` (``openai`` or ``heuristic``).

The backend (and a guard's ``helpfulness_backend``) must be named, as an argument or through
``AM3_JUDGE_BACKEND``: it decides what is trained and measured, so it is never inferred from which
variables happen to be visible in the process that scores.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from am3_verl.asr import UNSAFE_THRESHOLD
from am3_verl.clients.chat import ChatClient
from am3_verl.clients.endpoint import EndpointConfig
from am3_verl.clients.structured import validation_problems
from am3_verl.judges.base import Judge

logger = logging.getLogger(__name__)

BACKENDS: tuple[str, ...] = ("heuristic", "openai", "llama_guard4", "qwen3guard")
HELPFULNESS_BACKENDS: tuple[str, ...] = ("heuristic", "openai")
GUARD_BACKENDS: tuple[str, ...] = ("llama_guard4", "qwen3guard")

ENV = {
    "base_url": "AM3_JUDGE_BASE_URL",
    "model": "AM3_JUDGE_MODEL",
    "api_key": "AM3_JUDGE_API_KEY",
    "guard_base_url": "AM3_GUARD_BASE_URL",
    "guard_model": "AM3_GUARD_MODEL",
    "guard_api_key": "AM3_GUARD_API_KEY",
    "backend": "AM3_JUDGE_BACKEND",
}
"""Config key -> environment variable."""

SECRET_FIELDS = frozenset({"api_key", "guard_api_key"})

ENDPOINT_KEYS: tuple[str, ...] = ("timeout_s", "max_attempts", "backoff_initial_s", "backoff_max_s", "max_concurrency")
"""Flat keys (reward kwargs, ``--judge_*`` flags) that set both the judge's and the guard's endpoint."""
JUDGE_ENDPOINT_DEFAULTS: dict[str, Any] = {"max_concurrency": 256}
"""Where the judge endpoints differ from :class:`EndpointConfig`'s defaults: a reward step sends thousands of calls."""


class JudgeConfig(BaseModel):
    """Everything that decides which judge scores the turns and how it is called."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: Literal["heuristic", "openai", "llama_guard4", "qwen3guard"]
    judge: EndpointConfig | None = None
    """The rubric judge's endpoint (``base_url``/``model`` keys, env ``AM3_JUDGE_*``)."""
    guard: EndpointConfig | None = None
    """The guard's endpoint (``guard_base_url``/``guard_model`` keys, env ``AM3_GUARD_*``)."""
    helpfulness_backend: Literal["heuristic", "openai"] = "heuristic"
    """Helpfulness judge paired with a guard backend: ``openai`` or ``heuristic``."""
    temperature: float = Field(0.0, ge=0)
    max_tokens: int = Field(512, ge=1)
    """Rubric judge answer budget (the verdict JSON needs about 100 tokens)."""
    structured_output: bool = True
    """Send the verdict JSON schema as ``response_format`` (guided decoding)."""
    cache_size: int = Field(65536, ge=0)
    """Successful judgments remembered per process (0: off; in-flight de-duplication stays on)."""
    controversial_harmless: float = Field(0.5, ge=0, le=1)
    """Qwen3Guard ``Controversial`` -> this harmlessness."""
    unsafe_threshold: float = Field(UNSAFE_THRESHOLD, ge=0, le=1)
    """A judged turn with harmless below this counts toward ASR."""

    @model_validator(mode="after")
    def _endpoints(self) -> "JudgeConfig":
        needs_judge = self.backend == "openai" or (self.backend in GUARD_BACKENDS and self.helpfulness_backend == "openai")
        if needs_judge and self.judge is None:
            raise ValueError(
                f"judge backend {self.backend!r} needs base_url and model: set {ENV['base_url']} and {ENV['model']} "
                "(or reward_kwargs base_url=..., model=...)"
            )
        if self.backend in GUARD_BACKENDS and self.guard is None:
            raise ValueError(
                f"judge backend {self.backend!r} needs guard_base_url and guard_model: set {ENV['guard_base_url']} "
                f"and {ENV['guard_model']} (or reward_kwargs guard_base_url=..., guard_model=...)"
            )
        return self

    def describe(self) -> str:
        """One log-safe line naming the backend and endpoints (no keys)."""
        if self.backend == "heuristic":
            return "heuristic judge (offline keyword rules)"
        judge = f"rubric judge {self.judge.describe()}" if self.judge is not None else ""
        if self.backend == "openai":
            return judge
        helpful = judge if self.helpfulness_backend == "openai" else "heuristic helpfulness"
        return f"{self.backend} guard {self.guard.describe()} + {helpful}"


KEYS: frozenset[str] = frozenset(
    {"backend", "base_url", "model", "guard_base_url", "guard_model", *ENDPOINT_KEYS}
    | (JudgeConfig.model_fields.keys() - {"judge", "guard"})
)
"""Every key :func:`resolve_judge_config` accepts (reward kwargs, ``--judge_*`` flags)."""


def resolve_judge_config(kwargs: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None) -> JudgeConfig:
    """Build a :class:`JudgeConfig` from flat keyword arguments (verl reward kwargs, eval flags) and the environment.

    ``base_url``/``model`` (and ``guard_base_url``/``guard_model``) with :data:`ENDPOINT_KEYS` become the
    judge's (guard's) :class:`EndpointConfig`; an API key is read from ``AM3_JUDGE_API_KEY`` /
    ``AM3_GUARD_API_KEY`` when set. Raises ``ValueError`` for unknown keys, keys passed as arguments, bad
    values, or a backend missing its endpoint.
    """
    kwargs = dict(kwargs or {})
    environ = os.environ if environ is None else environ
    secrets = sorted(SECRET_FIELDS & kwargs.keys())
    if secrets:
        raise ValueError(
            f"judge config: pass {', '.join(secrets)} through the environment "
            f"({', '.join(ENV[s] for s in secrets)}), not as an argument: arguments end up in logs"
        )
    unknown = sorted(kwargs.keys() - KEYS)
    if unknown:
        raise ValueError(f"unknown judge config key(s) {unknown}; known: {sorted(KEYS)}")
    values: dict[str, Any] = {name: environ[var] for name, var in ENV.items() if name not in SECRET_FIELDS and environ.get(var)}
    values.update({k: v for k, v in kwargs.items() if v is not None})
    # The judge decides what is trained and measured: it is always named, never inferred.
    if "backend" not in values:
        raise ValueError(
            f"no judge backend named: set {ENV['backend']} or pass backend= (reward_kwargs.backend, --judge_backend) "
            f"to one of {', '.join(BACKENDS)}; am3-verl does not pick one (heuristic is the offline keyword judge)"
        )
    if values["backend"] in GUARD_BACKENDS and "helpfulness_backend" not in values:
        raise ValueError(
            f"judge backend {values['backend']!r} judges harmlessness only: name the helpfulness judge with "
            f"helpfulness_backend= ({' or '.join(HELPFULNESS_BACKENDS)})"
        )
    shared = {**JUDGE_ENDPOINT_DEFAULTS, **{k: values.pop(k) for k in ENDPOINT_KEYS if k in values}}
    try:  # checked also when no endpoint uses them (the heuristic backend), so a bad value never passes silently
        EndpointConfig(base_url="http://unused/v1", model="unused", **shared)
    except ValidationError as exc:
        raise ValueError(f"judge config: {validation_problems(exc)}") from None
    endpoints = (("judge", "base_url", "model", "api_key"), ("guard", "guard_base_url", "guard_model", "guard_api_key"))
    for name, url, model, key in endpoints:
        url_value, model_value = values.pop(url, None), values.pop(model, None)
        if url_value and model_value:
            key_env = ENV[key] if environ.get(ENV[key]) else None
            values[name] = {"base_url": url_value, "model": model_value, "api_key_env": key_env, **shared}
    try:
        return JudgeConfig.model_validate(values)
    except ValidationError as exc:
        raise ValueError(f"judge config: {validation_problems(exc)}") from None


def build_judge(config: JudgeConfig) -> Judge:
    """A new judge for ``config`` (callers normally want the shared one from :func:`get_judge`)."""
    from am3_verl.judges.guards import GuardedJudge, LlamaGuard4, Qwen3Guard
    from am3_verl.judges.heuristic import HeuristicJudge
    from am3_verl.judges.openai_judge import OpenAIRubricJudge

    def rubric_judge() -> OpenAIRubricJudge:
        return OpenAIRubricJudge(
            ChatClient(config.judge),
            temperature=config.temperature,
            max_tokens=config.max_tokens,
            structured_output=config.structured_output,
            cache_size=config.cache_size,
        )

    if config.backend == "heuristic":
        return HeuristicJudge(cache_size=config.cache_size)
    if config.backend == "openai":
        return rubric_judge()
    guard_client = ChatClient(config.guard)
    guard = (
        LlamaGuard4(guard_client)
        if config.backend == "llama_guard4"
        else Qwen3Guard(guard_client, controversial_harmless=config.controversial_harmless)
    )
    helpfulness = rubric_judge() if config.helpfulness_backend == "openai" else HeuristicJudge(cache_size=0)
    return GuardedJudge(guard, helpfulness, cache_size=config.cache_size)


_JUDGES: dict[JudgeConfig, Judge] = {}
_JUDGES_LOCK = threading.Lock()


def get_judge(config: JudgeConfig) -> Judge:
    """The process-wide judge for ``config``: built on first use, then reused (one HTTP client per loop)."""
    with _JUDGES_LOCK:
        judge = _JUDGES.get(config)
        if judge is None:
            judge = build_judge(config)
            _JUDGES[config] = judge
            logger.info("am3 judge: %s", config.describe())
        return judge
