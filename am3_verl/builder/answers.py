"""The JSON answers the builder's roles must give, and their parsing.

Each role answers one JSON object (optionally inside a single ```json fence). The models below are sent
as ``response_format`` JSON schemas when ``run.structured_output`` is on, and every answer is validated
against them either way. A parser raises ``ValueError`` saying what is wrong, which the chat client
counts as a ``parse`` failure and retries (the model may answer well next time).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator
from am3_verl.clients.structured import parse_model

from am3_verl.dialogue import IMAGE_PLACEHOLDER

M = TypeVar("M", bound=BaseModel)

SCORE_SCALE = 10.0


def _clean_text(value: str, what: str) -> str:
    value = value.strip()
    if not value:
        raise ValueError(f"{what} is empty")
    if IMAGE_PLACEHOLDER in value:
        raise ValueError(f"{what} contains the reserved {IMAGE_PLACEHOLDER} placeholder")
    return value


class _Answer(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Decomposition(_Answer):
    """The decomposer's split of a seed into sub-queries."""

    sub_queries: list[str]

    @field_validator("sub_queries")
    @classmethod
    def _texts(cls, value: list[str]) -> list[str]:
        return [_clean_text(text, f"sub_queries[{k}]") for k, text in enumerate(value)]


class Rewrite(_Answer):
    """The decomposer's replacement of one sub-query."""

    sub_query: str

    @field_validator("sub_query")
    @classmethod
    def _text(cls, value: str) -> str:
        return _clean_text(value, "sub_query")


CRITERIA: tuple[str, ...] = ("image_relevance", "intent_link", "harmless_wording")


class SubQueryScores(_Answer):
    """The scorer's rating of one sub-query (0-10 per criterion)."""

    image_relevance: float = Field(ge=0, le=SCORE_SCALE)
    intent_link: float = Field(ge=0, le=SCORE_SCALE)
    harmless_wording: float = Field(ge=0, le=SCORE_SCALE)
    rationale: str = Field(max_length=2000)

    def normalised(self) -> dict[str, float]:
        """Criterion -> score on [0, 1]."""
        return {name: getattr(self, name) / SCORE_SCALE for name in CRITERIA}


class AttackerMove(_Answer):
    """The attacker's next user turn."""

    message: str
    image: Literal["none", "seed", "new"]
    image_description: str
    """What a new picture should show (empty unless ``image`` is ``new``)."""

    @field_validator("message")
    @classmethod
    def _message(cls, value: str) -> str:
        return _clean_text(value, "message")


class RiskVerdict(_Answer):
    """The clean-stage judge's verdict on a dialogue."""

    risk_identifiable: bool
    risk: float = Field(ge=0, le=SCORE_SCALE)
    category: str = Field(max_length=200)
    rationale: str = Field(max_length=2000)


@functools.lru_cache(maxsize=64)
def response_format(model: type[BaseModel], name: str) -> dict[str, Any]:
    """The ``response_format`` request field asking for ``model``'s JSON schema (built once; do not mutate)."""
    return {"type": "json_schema", "json_schema": {"name": name, "schema": model.model_json_schema(), "strict": True}}


def parser(model: type[M], check: Callable[[M], None] | None = None) -> Callable[[str], M]:
    """A parse function for the chat client: JSON object -> ``model``, then the optional ``check``."""

    def parse(content: str) -> M:
        value = parse_model(content, model)
        if check is not None:
            check(value)
        return value

    return parse


def refusal_parser(max_chars: int) -> Callable[[str], str]:
    """A parse function for the refusal writer: the answer must start with "I'm sorry" and fit ``max_chars``."""

    def parse(content: str) -> str:
        text = content.strip().replace("\u2019", "'")
        if len(text) >= 2 and text[0] == text[-1] == '"':
            text = text[1:-1].strip()
        if not text.startswith("I'm sorry"):
            raise ValueError(f'answer does not begin with "I\'m sorry": {text[:80]!r}')
        if len(text) > max_chars:
            raise ValueError(f"answer has {len(text)} characters, more than {max_chars}")
        if IMAGE_PLACEHOLDER in text:
            raise ValueError(f"answer contains the reserved {IMAGE_PLACEHOLDER} placeholder")
        return text

    return parse


def non_empty_reply(content: str) -> str:
    """A victim reply: any non-blank text (returned stripped)."""
    text = content.strip()
    if not text:
        raise ValueError("the reply is empty")
    return text
