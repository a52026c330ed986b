"""The builder's YAML config: named endpoints, the model roles that use them, the stage knobs, prompt overrides.

One file serves both commands (``build_intersafe_v.py`` needs ``roles`` and ``victims``;
``build_refusal_vqa.py`` needs ``refusal_vqa``). Every section is a pydantic model with ``extra="forbid"``,
so a misspelt key is an error naming its path. ``endpoints`` are :class:`~am3_verl.clients.endpoint.EndpointConfig`
entries (the endpoint config every component uses); roles and ``text_to_image`` name one. API keys never
appear in the file: an endpoint names the environment variable that holds its key (``api_key_env``), read
when the run starts.

:func:`content_fingerprint` hashes the settings that change what the builder produces (prompts, models,
thresholds...) but not the operational ones (URLs, timeouts, concurrency), so a resumed run can refuse
to mix outputs of two different configurations.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from am3_verl.clients.endpoint import EndpointConfig
from am3_verl.data.errors import DataPrepError
from am3_verl.data.validate import format_loc

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
"""Endpoint and victim names: they become parts of ids and file names."""


class BuilderError(DataPrepError):
    """A problem that stops a builder run: a bad config, an unreadable seeds file, a missing API key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RoleConfig(_Strict):
    """A model role (decomposer, scorer, attacker, judge, refusal writer): which endpoint, which sampling."""

    endpoint: str
    """Name of an entry of ``endpoints``."""
    temperature: float = Field(0.7, ge=0)
    max_tokens: int = Field(1024, ge=1)
    extra_params: dict[str, Any] = Field(default_factory=dict)
    """More request-body fields (``top_p``, ``seed``, ``chat_template_kwargs``...), sent as given."""

    @field_validator("extra_params")
    @classmethod
    def _no_overlap(cls, value: dict[str, Any]) -> dict[str, Any]:
        reserved = sorted({"model", "messages", "temperature", "max_tokens", "response_format", "stream"} & value.keys())
        if reserved:
            raise ValueError(f"{reserved} are set by the builder; use the role's own fields")
        return value

    def request_params(self) -> dict[str, Any]:
        """The request-body fields this role adds to every call."""
        return {"temperature": self.temperature, "max_tokens": self.max_tokens, **self.extra_params}


class VictimConfig(RoleConfig):
    """A victim model: the attacker's counterpart; one dialogue per seed and victim."""

    name: str
    """Short unique name; part of the dialogue id (``<seed id>-<name>``)."""
    system_prompt: str | None = None
    """A system message put first in every victim request (None: none, the model's default behaviour)."""

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NAME_PATTERN.match(value):
            raise ValueError(f"{value!r} must match {NAME_PATTERN.pattern} (letters, digits, _ . -)")
        return value


class RolesConfig(_Strict):
    """The model roles of the InterSafe-V pipeline (the victims are listed separately)."""

    decomposer: RoleConfig
    """Splits a seed into sub-queries and rewrites the ones that fail review."""
    scorer: RoleConfig
    """Rates each sub-query for image relevance, link to the intent and harmless wording."""
    attacker: RoleConfig
    """The "safety expert" who writes every user turn."""
    judge: RoleConfig
    """Decides whether a finished dialogue still carries an identifiable risk."""


class TextToImageConfig(_Strict):
    """The OpenAI-images-compatible endpoint (``POST {base_url}/images/generations``), or disabled."""

    enabled: bool = False
    """When false the attacker is told that no new pictures can be drawn."""
    endpoint: str | None = None
    """Name of an entry of ``endpoints`` that serves ``/images/generations``."""
    size: str | None = "1024x1024"
    """``size`` sent with each request (None: not sent)."""
    send_response_format: bool = True
    """Send ``response_format: b64_json`` (some servers always answer b64 and reject the field)."""
    extra_params: dict[str, Any] = Field(default_factory=dict)
    """More request-body fields (``quality``, ``seed``, ``negative_prompt``...)."""

    @model_validator(mode="after")
    def _complete(self) -> "TextToImageConfig":
        if self.enabled and not self.endpoint:
            raise ValueError("enabled text_to_image needs an endpoint (the name of an entry of endpoints)")
        return self


class DecomposeConfig(_Strict):
    """Decompose stage knobs."""

    min_sub_queries: int = Field(3, ge=1)
    max_sub_queries: int = Field(5, ge=1)
    thresholds: dict[Literal["image_relevance", "intent_link", "harmless_wording"], float] = Field(
        default_factory=lambda: {"image_relevance": 0.6, "intent_link": 0.6, "harmless_wording": 0.6}
    )
    """Minimum normalised score ([0, 1]) per criterion; a sub-query passes when it meets all three."""
    max_regenerations: int = Field(2, ge=0)
    """Rewrites allowed per sub-query after its first rejection; then the whole seed is dropped."""

    @model_validator(mode="after")
    def _check(self) -> "DecomposeConfig":
        if self.max_sub_queries < self.min_sub_queries:
            raise ValueError(f"max_sub_queries {self.max_sub_queries} < min_sub_queries {self.min_sub_queries}")
        missing = {"image_relevance", "intent_link", "harmless_wording"} - self.thresholds.keys()
        if missing:
            raise ValueError(f"thresholds lacks {sorted(missing)}")
        for name, value in self.thresholds.items():
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"thresholds.{name} = {value} is not in [0, 1]")
        return self


class InteractConfig(_Strict):
    """Interact stage knobs."""

    max_new_images: int = Field(2, ge=0)
    """Pictures the attacker may have drawn per dialogue; further requests are downgraded to no image
    and recorded in the dialogue's ``meta``."""


class CleanConfig(_Strict):
    """Clean stage knobs."""

    hash_size: int = Field(8, ge=4, le=32)
    """dHash grid side: the hash has ``hash_size ** 2`` bits."""
    max_distance: int = Field(6, ge=0)
    """Two images of one dialogue whose hashes differ in at most this many bits are near duplicates;
    the later one is removed (with its ``<image>`` placeholder). Scale it with ``hash_size ** 2``."""
    min_risk: float = Field(0.5, ge=0.0, le=1.0)
    """A dialogue is kept when the judge finds its risk identifiable and rates it at least this ([0, 1])."""


class ExecutionConfig(_Strict):
    """How the run is executed (not part of the content fingerprint)."""

    concurrency: int = Field(16, ge=1)
    """Seeds in progress at once (each runs its calls in order; victims of one seed run in parallel)."""
    structured_output: bool = True
    """Send each role's JSON schema as ``response_format`` (guided decoding); turn off for servers that
    reject ``json_schema`` response formats."""
    fsync: bool = False
    """fsync every checkpoint (survives power loss; a killed process never loses a finished checkpoint
    either way, because every write is an atomic rename)."""


class OutputConfig(_Strict):
    """What goes into the output records."""

    victim_replies: Literal["meta", "none"] = "meta"
    """Keep the victims' replies in ``meta.victim_replies`` (never as reference ``assistant`` replies,
    which must be safe), or leave them out."""
    id_prefix: str = ""
    """Prepended to every dialogue id."""


class SourceConfig(_Strict):
    """A local copy of one refusal-VQA source and how to read its records."""

    path: str | None = None
    """File (``.jsonl``, ``.json``, ``.parquet``, ``.csv``, ``.tsv``) or saved ``datasets`` folder;
    ``--general/--health/--finance`` override it."""
    preset: Literal["spa_vl", "jailbreakv", "mme_finance", "custom"] = "custom"
    """Field names of the public release (see docs/builder.md); explicit fields below override them."""
    id_field: str | None = None
    """Column with a record id (None: the record's position)."""
    image_field: str | None = None
    question_field: str | None = None
    image_root: str | None = None
    """Folder relative image paths start from (default: the file's folder)."""
    filter: dict[str, str | list[str]] | None = None
    """Keep only records whose field equals the value (or one of the values); None: the preset's."""


class RefusalVqaConfig(_Strict):
    """The refusal VQA builder."""

    writer: RoleConfig
    """Writes the analysed "I'm sorry" answers of the general harmful questions."""
    counts: dict[Literal["general", "health", "finance"], int] = Field(
        default_factory=lambda: {"general": 300, "health": 100, "finance": 100}
    )
    seed: int = 42
    """Seed of the candidate shuffle (which records are picked)."""
    sources: dict[Literal["general", "health", "finance"], SourceConfig] = Field(
        default_factory=lambda: {
            "general": SourceConfig(preset="spa_vl"),
            "health": SourceConfig(preset="jailbreakv"),
            "finance": SourceConfig(preset="mme_finance"),
        }
    )
    max_answer_chars: int = Field(1500, ge=50)
    """Longer written answers are rejected (and retried)."""
    concurrency: int = Field(16, ge=1)

    @field_validator("counts")
    @classmethod
    def _counts(cls, value: dict[str, int]) -> dict[str, int]:
        for domain, n in value.items():
            if n < 0:
                raise ValueError(f"counts.{domain} = {n} is negative")
        return value


class BuilderConfig(_Strict):
    """The whole config file."""

    endpoints: dict[str, EndpointConfig] = Field(default_factory=dict)
    roles: RolesConfig | None = None
    victims: list[VictimConfig] = Field(default_factory=list)
    text_to_image: TextToImageConfig = Field(default_factory=TextToImageConfig)
    decompose: DecomposeConfig = Field(default_factory=DecomposeConfig)
    interact: InteractConfig = Field(default_factory=InteractConfig)
    clean: CleanConfig = Field(default_factory=CleanConfig)
    run: ExecutionConfig = Field(default_factory=ExecutionConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    prompts: dict[str, str] = Field(default_factory=dict)
    """Prompt overrides by name (see :data:`am3_verl.builder.prompts.PROMPT_FIELDS`)."""
    professional_refusals: dict[Literal["health", "finance"], list[str]] = Field(default_factory=dict)
    """Overrides of the professional-boundary refusal answers of the refusal VQA set."""
    refusal_vqa: RefusalVqaConfig | None = None

    @field_validator("endpoints")
    @classmethod
    def _endpoint_names(cls, value: dict[str, EndpointConfig]) -> dict[str, EndpointConfig]:
        for name in value:
            if not NAME_PATTERN.match(name):
                raise ValueError(f"endpoint name {name!r} must match {NAME_PATTERN.pattern}")
        return value

    @model_validator(mode="after")
    def _references(self) -> "BuilderConfig":
        from am3_verl.builder.prompts import check_overrides, professional_refusals

        def check(role: RoleConfig | TextToImageConfig, where: str) -> None:
            if role.endpoint not in self.endpoints:
                known = ", ".join(sorted(self.endpoints)) or "none defined"
                raise ValueError(f"{where}.endpoint {role.endpoint!r} is not in endpoints ({known})")

        limits: dict[tuple[str, str], tuple[str, int]] = {}
        for name, endpoint in self.endpoints.items():
            first, limit = limits.setdefault(endpoint.key, (name, endpoint.max_concurrency))
            if limit != endpoint.max_concurrency:
                raise ValueError(
                    f"endpoints {first} and {name} are one endpoint ({endpoint.describe()}) with two "
                    f"max_concurrency values ({limit}, {endpoint.max_concurrency}); one endpoint has one limit"
                )
        if self.roles is not None:
            for name in ("decomposer", "scorer", "attacker", "judge"):
                check(getattr(self.roles, name), f"roles.{name}")
        names = [victim.name for victim in self.victims]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"victim names must be unique; repeated: {duplicates}")
        for k, victim in enumerate(self.victims):
            check(victim, f"victims[{k}]")
        if self.refusal_vqa is not None:
            check(self.refusal_vqa.writer, "refusal_vqa.writer")
        if self.text_to_image.enabled:
            check(self.text_to_image, "text_to_image")
        check_overrides(self.prompts)
        for domain, answers in self.professional_refusals.items():
            professional_refusals(domain, {domain: answers})
        return self

    def require_pipeline(self) -> RolesConfig:
        """The roles, or a :class:`BuilderError` saying what the InterSafe-V pipeline still needs."""
        if self.roles is None:
            raise BuilderError("the config has no `roles` section (decomposer, scorer, attacker, judge)")
        if not self.victims:
            raise BuilderError("the config lists no `victims`; the interact stage needs at least one")
        return self.roles

    def require_refusal_vqa(self) -> RefusalVqaConfig:
        """The refusal VQA section, or a :class:`BuilderError`."""
        if self.refusal_vqa is None:
            raise BuilderError("the config has no `refusal_vqa` section (writer role, sources, counts)")
        return self.refusal_vqa


def parse_config(data: Any, where: str = "config") -> BuilderConfig:
    """Validate a config mapping; raises :class:`BuilderError` naming every bad field."""
    if not isinstance(data, Mapping):
        raise BuilderError(f"{where} must be a mapping of sections, found {type(data).__name__}")
    try:
        return BuilderConfig.model_validate(dict(data))
    except ValidationError as exc:
        problems = "; ".join(
            f"{format_loc(e['loc'])}: {str(e['msg']).removeprefix('Value error, ')}" for e in exc.errors(include_url=False)
        )
        raise BuilderError(f"{where} is invalid: {problems}") from None


def load_config(path: str | Path) -> BuilderConfig:
    """Read and validate a YAML config file; raises :class:`BuilderError` for a missing file or bad content."""
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BuilderError(f"config file {p} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BuilderError(f"cannot read config file {p}: {exc}") from None
    except yaml.YAMLError as exc:
        raise BuilderError(f"config file {p} is not valid YAML: {exc}") from None
    return parse_config(data if data is not None else {}, where=str(p))


def content_fingerprint(config: BuilderConfig) -> dict[str, str]:
    """Short hashes of the settings that decide the pipeline's output, by section.

    Included: models and sampling of every role and victim, the text-to-image model and request
    fields, the stage knobs, the output options and the prompt overrides. Left out: URLs, keys,
    timeouts, retries, concurrency and ``run``.
    """

    def role(r: RoleConfig | None) -> Any:
        if r is None:
            return None
        return {"model": config.endpoints[r.endpoint].model, **r.request_params()}

    t2i = config.text_to_image
    sections = {
        "roles": {n: role(getattr(config.roles, n)) for n in ("decomposer", "scorer", "attacker", "judge")}
        if config.roles is not None
        else None,
        "victims": [{"name": v.name, "system_prompt": v.system_prompt, **role(v)} for v in config.victims],
        "text_to_image": {
            "enabled": t2i.enabled,
            "model": config.endpoints[t2i.endpoint].model,
            "size": t2i.size,
            "extra": t2i.extra_params,
        }
        if t2i.enabled
        else {"enabled": False},
        "decompose": config.decompose.model_dump(),
        "interact": config.interact.model_dump(),
        "clean": config.clean.model_dump(),
        "output": config.output.model_dump(),
        "prompts": config.prompts,
    }
    return {
        name: hashlib.sha256(json.dumps(value, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]
        for name, value in sections.items()
    }
