"""Where and how to call one model endpoint, and the process-wide limit on requests to it.

:class:`EndpointConfig` is the one endpoint description every caller uses: judges and guards, the
simulated user, the evaluated model, the pairwise comparer, every builder role and the text-to-image
endpoint. Keys never sit in it: it names the environment variable that holds the key
(``api_key_env``), read when a client is made (:meth:`EndpointConfig.api_key`). Credentials in the URL
(``http://user:password@host/v1``, sent as Basic auth) never appear in what the config shows
(:meth:`EndpointConfig.describe`, its repr, its validation errors: :func:`strip_userinfo`), and cannot be
combined with ``api_key_env``.

:func:`endpoint_limiter` gives one semaphore per endpoint (``base_url`` + ``model``) and event loop, held
only while a request is on the wire, so every client of an endpoint in a process shares one limit. Two
configs that give the same endpoint different limits are an error, not two separate limits: a program
whose roles may share an endpoint (the evaluated model and its judge on one server) reconciles their
configs first with :func:`share_limits`.
"""

from __future__ import annotations

import asyncio
import os
import re
from typing import Any, Callable, Mapping
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

DEFAULT_TIMEOUT_S = 120.0
"""Wall-clock limit of one attempt when a config gives none (the same for every kind of endpoint)."""


class EndpointConfig(BaseModel):
    """One OpenAI-compatible endpoint: ``base_url`` (with ``/v1``), the model, its key's variable, timeouts,
    retries and the number of requests on the wire at once."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    base_url: str
    """Endpoint root including ``/v1``, e.g. ``http://judge-host:8000/v1`` (``user:password@`` in it is sent
    as Basic auth, and is refused together with ``api_key_env``)."""
    model: str
    """Model name sent with every request."""
    api_key_env: str | None = None
    """Environment variable holding the bearer token (None: no ``Authorization`` header)."""
    timeout_s: float = Field(DEFAULT_TIMEOUT_S, gt=0)
    """Wall-clock limit of one attempt (connect + send + wait + read)."""
    connect_timeout_s: float = Field(10.0, gt=0)
    max_attempts: int = Field(4, ge=1)
    """Attempts per call, the first included; transient failures are retried."""
    backoff_initial_s: float = Field(0.5, ge=0)
    """First backoff; doubles per retry up to ``backoff_max_s``, plus uniform jitter in [0, this)."""
    backoff_max_s: float = Field(10.0, gt=0)
    max_concurrency: int = Field(64, ge=1)
    """Requests on the wire at once to this endpoint, over every client of it in this process."""

    @model_validator(mode="before")
    @classmethod
    def _no_literal_key(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and "api_key" in data:
            raise ValueError(
                "put the API key in an environment variable and name it with api_key_env; "
                "a key in a config ends up in logs and version control"
            )
        return data

    @field_validator("base_url")
    @classmethod
    def _http(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"must start with http:// or https://, got {strip_userinfo(value)!r}")
        return value

    @field_validator("model")
    @classmethod
    def _model(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("is empty")
        return value

    @model_validator(mode="after")
    def _one_credential(self) -> "EndpointConfig":
        if self.api_key_env is not None and has_userinfo(self.base_url):
            raise ValueError(
                f"base_url has credentials (user:password@) and api_key_env names {self.api_key_env}: an endpoint "
                f"authenticates one way. Remove user:password@ from base_url to send the key in {self.api_key_env}, "
                f"or leave {self.api_key_env} unset to send the URL's credentials"
            )
        return self

    def __repr_args__(self) -> Any:
        for name, value in super().__repr_args__():
            yield name, strip_userinfo(value) if name == "base_url" else value

    @property
    def key(self) -> tuple[str, str]:
        """What identifies the endpoint for the concurrency limit: ``(base_url without trailing /, model)``."""
        return self.base_url.rstrip("/"), self.model

    def api_key(self, environ: Mapping[str, str] | None = None) -> str | None:
        """The key in ``api_key_env`` (None when no variable is named); a named but unset variable is an error."""
        if self.api_key_env is None:
            return None
        value = (os.environ if environ is None else environ).get(self.api_key_env)
        if not value:
            raise ValueError(f"endpoint {self.describe()}: api_key_env names {self.api_key_env}, which is not set")
        return value

    def describe(self) -> str:
        """One log-safe line: model and URL (never the key, nor credentials in the URL)."""
        return f"{self.model} at {strip_userinfo(self.base_url)}"


_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*:(?:\\?/){2})[^/\\?#\s]*@")
"""``scheme://`` (its slashes possibly JSON-escaped), then userinfo: the rest of the authority up to its last ``@``."""


def strip_userinfo(text: str) -> str:
    """``text`` with the credentials of every URL in it removed: ``http://user:pw@host/v1`` -> ``http://host/v1``."""
    return _USERINFO.sub(r"\1", text) if "@" in text else text


def has_userinfo(url: str) -> bool:
    """Whether ``url`` carries credentials (``user[:password]@`` before the host)."""
    return "@" in urlsplit(url).netloc


def per_loop(table: dict, loop: asyncio.AbstractEventLoop, make: Callable[[], Any]) -> Any:
    """``table[loop]``, created by ``make()`` on first use; entries of closed loops are dropped then.

    (Per-loop asyncio objects reference their loop, so a weak-keyed table would never let go of it.)"""
    value = table.get(loop)
    if value is None:
        for old in [key for key in table if key.is_closed()]:
            del table[old]
        value = table[loop] = make()
    return value


_LIMITERS: dict[asyncio.AbstractEventLoop, dict[tuple[str, str], tuple[int, asyncio.Semaphore]]] = {}


def endpoint_limiter(endpoint: EndpointConfig) -> asyncio.Semaphore:
    """The running loop's semaphore for ``endpoint`` (``max_concurrency`` slots), shared by every client of it.

    Raises ``ValueError`` when another config already gave the same endpoint a different limit."""
    limiters = per_loop(_LIMITERS, asyncio.get_running_loop(), dict)
    entry = limiters.get(endpoint.key)
    if entry is None:
        entry = limiters[endpoint.key] = (endpoint.max_concurrency, asyncio.Semaphore(endpoint.max_concurrency))
    limit, semaphore = entry
    if limit != endpoint.max_concurrency:
        raise ValueError(
            f"endpoint {endpoint.describe()} already has max_concurrency {limit} in this process; another client "
            f"asks for {endpoint.max_concurrency}. One endpoint has one limit: give every config of it the same value."
        )
    return semaphore


def share_limits(roles: Mapping[str, EndpointConfig | None]) -> tuple[dict[str, EndpointConfig | None], list[str]]:
    """Give every endpoint that serves several roles one limit, the smallest any of its roles asks for.

    ``roles`` maps a role, as it reads in a sentence ("the model", "the judge"), to its endpoint (None: the
    role has none). Returns the same mapping with those endpoints' ``max_concurrency`` made equal, so that
    :func:`endpoint_limiter` accepts all of them, and one log line per shared endpoint announcing its limit."""
    by_key: dict[tuple[str, str], list[str]] = {}
    for role, endpoint in roles.items():
        if endpoint is not None:
            by_key.setdefault(endpoint.key, []).append(role)
    shared = dict(roles)
    notes = []
    for names in by_key.values():
        if len(names) < 2:
            continue
        endpoints = [roles[name] for name in names]
        limit = min(endpoint.max_concurrency for endpoint in endpoints)
        for name, endpoint in zip(names, endpoints):
            shared[name] = endpoint.model_copy(update={"max_concurrency": limit})
        served = " and ".join([", ".join(names[:-1]), names[-1]])
        asked = ", ".join(f"{name} {endpoint.max_concurrency}" for name, endpoint in zip(names, endpoints))
        notes.append(
            f"endpoint {endpoints[0].describe()} serves {'both ' if len(names) == 2 else ''}{served}: one limit of {limit} "
            f"requests on the wire, the {'smaller' if len(names) == 2 else 'smallest'} asked for ({asked})"
        )
    return shared, notes
