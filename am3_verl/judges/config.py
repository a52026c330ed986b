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

import dataclasses
import logging
import os
import threading
from dataclasses import dataclass, field
from typing import Any, Mapping

from am3_verl.asr import UNSAFE_THRESHOLD
from am3_verl.judges.base import Judge
from am3_verl.clients.chat import ChatClient, ChatClientConfig

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
"""Config field -> environment variable."""

SECRET_FIELDS = frozenset({"api_key", "guard_api_key"})


@dataclass(frozen=True)
class JudgeConfig:
    """Everything that decides which judge scores the turns and how it is called."""

    backend: str = "heuristic"
    """One of :data:`BACKENDS`."""
    base_url: str | None = None
    """Rubric judge endpoint (``.../v1``); env ``AM3_JUDGE_BASE_URL``."""
    model: str | None = None
    """Rubric judge model name; env ``AM3_JUDGE_MODEL``."""
    api_key: str | None = field(default=None, repr=False)
    """Rubric judge key; env ``AM3_JUDGE_API_KEY`` only. Never logged."""
    guard_base_url: str | None = None
    """Guard endpoint; env ``AM3_GUARD_BASE_URL``."""
    guard_model: str | None = None
    """Guard model name; env ``AM3_GUARD_MODEL``."""
    guard_api_key: str | None = field(default=None, repr=False)
    """Guard key; env ``AM3_GUARD_API_KEY`` only. Never logged."""
    helpfulness_backend: str = "heuristic"
    """Helpfulness judge paired with a guard backend: ``openai`` or ``heuristic``."""
    timeout_s: float = 120.0
    """Per-attempt wall-clock limit of a judge call."""
    max_attempts: int = 4
    """Attempts per judge call before the turn is marked ``judge_failed``."""
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 10.0
    max_concurrency: int = 256
    """Judge requests on the wire at once in this process."""
    temperature: float = 0.0
    max_tokens: int = 512
    """Rubric judge answer budget (the verdict JSON needs about 100 tokens)."""
    structured_output: bool = True
    """Send the verdict JSON schema as ``response_format`` (guided decoding)."""
    cache_size: int = 65536
    """Successful judgments remembered per process (0: off; in-flight de-duplication stays on)."""
    controversial_harmless: float = 0.5
    """Qwen3Guard ``Controversial`` -> this harmlessness."""
    unsafe_threshold: float = UNSAFE_THRESHOLD
    """A judged turn with harmless below this counts toward ASR."""

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"judge backend {self.backend!r} is unknown; expected one of {', '.join(BACKENDS)}")
        if self.helpfulness_backend not in HELPFULNESS_BACKENDS:
            raise ValueError(
                f"helpfulness_backend {self.helpfulness_backend!r} is unknown; expected one of {', '.join(HELPFULNESS_BACKENDS)}"
            )
        needs_judge = self.backend == "openai" or (self.backend in ("llama_guard4", "qwen3guard") and self.helpfulness_backend == "openai")
        if needs_judge and not (self.base_url and self.model):
            raise ValueError(
                f"judge backend {self.backend!r} needs base_url and model: set {ENV['base_url']} and {ENV['model']} "
                "(or reward_kwargs base_url=..., model=...)"
            )
        if self.backend in ("llama_guard4", "qwen3guard") and not (self.guard_base_url and self.guard_model):
            raise ValueError(
                f"judge backend {self.backend!r} needs guard_base_url and guard_model: set {ENV['guard_base_url']} "
                f"and {ENV['guard_model']} (or reward_kwargs guard_base_url=..., guard_model=...)"
            )
        if not 0.0 <= self.unsafe_threshold <= 1.0:
            raise ValueError(f"unsafe_threshold must be in [0, 1], got {self.unsafe_threshold!r}")

    def describe(self) -> str:
        """One log-safe line naming the backend and endpoints (no keys)."""
        if self.backend == "heuristic":
            return "heuristic judge (offline keyword rules)"
        judge = f"rubric judge {self.model} at {self.base_url}"
        if self.backend == "openai":
            return judge
        helpful = judge if self.helpfulness_backend == "openai" else "heuristic helpfulness"
        return f"{self.backend} guard {self.guard_model} at {self.guard_base_url} + {helpful}"


_FIELDS = {f.name: f for f in dataclasses.fields(JudgeConfig)}


def _coerce(name: str, value: Any) -> Any:
    kind = _FIELDS[name].type
    if value is None:
        return None
    try:
        if kind == "bool":
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
                return value.lower() in ("true", "1", "yes")
            raise ValueError("expected true/false")
        if kind == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError("expected an integer")
            return int(value)
        if kind == "float":
            if isinstance(value, bool):
                raise ValueError("expected a number")
            return float(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"judge config {name}={value!r}: {exc}") from None
    return str(value)


_RESOLVED: dict[tuple, JudgeConfig] = {}


def resolve_judge_config(kwargs: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None) -> JudgeConfig:
    """Build a :class:`JudgeConfig` from keyword arguments (e.g. verl reward kwargs) and the environment.

    Raises ``ValueError`` for unknown keys, keys passed as arguments, bad values, or a backend
    missing its endpoint. Results are memoised on (arguments, judge environment variables), since the
    reward function resolves the same settings on every call.
    """
    kwargs = dict(kwargs or {})
    environ = os.environ if environ is None else environ
    try:
        key = (tuple(sorted(kwargs.items())), tuple(environ.get(var) for var in ENV.values()))
        hash(key)
    except TypeError:  # an unhashable argument value: resolve without memoising
        return _resolve(kwargs, environ)
    config = _RESOLVED.get(key)
    if config is None:
        config = _resolve(kwargs, environ)
        if len(_RESOLVED) >= 256:
            _RESOLVED.clear()
        _RESOLVED[key] = config
    return config


def _resolve(kwargs: dict[str, Any], environ: Mapping[str, str]) -> JudgeConfig:
    secrets = sorted(SECRET_FIELDS & kwargs.keys())
    if secrets:
        raise ValueError(
            f"judge config: pass {', '.join(secrets)} through the environment "
            f"({', '.join(ENV[s] for s in secrets)}), not as an argument: arguments end up in logs"
        )
    unknown = sorted(kwargs.keys() - _FIELDS.keys())
    if unknown:
        raise ValueError(f"unknown judge config key(s) {unknown}; known: {sorted(_FIELDS.keys() - SECRET_FIELDS)}")
    values: dict[str, Any] = {}
    for name, var in ENV.items():
        if environ.get(var):
            values[name] = environ[var]
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
    return JudgeConfig(**{k: _coerce(k, v) for k, v in values.items()})


def _client(config: JudgeConfig, base_url: str, model: str, api_key: str | None, group: str) -> ChatClient:
    return ChatClient(
        ChatClientConfig(
            base_url=base_url,
            model=model,
            api_key=api_key,
            timeout_s=config.timeout_s,
            max_attempts=config.max_attempts,
            backoff_initial_s=config.backoff_initial_s,
            backoff_max_s=config.backoff_max_s,
            max_concurrency=config.max_concurrency,
            concurrency_group=f"{group}:{config.max_concurrency}",
        )
    )


def build_judge(config: JudgeConfig) -> Judge:
    """A new judge for ``config`` (callers normally want the shared one from :func:`get_judge`)."""
    from am3_verl.judges.guards import GuardedJudge, LlamaGuard4, Qwen3Guard
    from am3_verl.judges.heuristic import HeuristicJudge
    from am3_verl.judges.openai_judge import OpenAIRubricJudge

    def rubric_judge() -> OpenAIRubricJudge:
        return OpenAIRubricJudge(
            _client(config, config.base_url, config.model, config.api_key, "am3-judge"),
            temperature=config.temperature,
            max_tokens=config.max_tokens,
            structured_output=config.structured_output,
            cache_size=config.cache_size,
        )

    if config.backend == "heuristic":
        return HeuristicJudge(cache_size=config.cache_size)
    if config.backend == "openai":
        return rubric_judge()
    guard_client = _client(config, config.guard_base_url, config.guard_model, config.guard_api_key, "am3-guard")
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
