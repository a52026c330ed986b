"""Strict parsing of a model's structured answer: exactly one JSON object that matches a pydantic model.

Judges, the pairwise comparer and the data builder ask endpoints for one JSON object (optionally inside a
single ```json fence) and accept nothing else: no prose around it, no second object, no extra keys, no
key given twice (JSON would silently keep the last one).
"""

from __future__ import annotations

import json
import re
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)

_FENCED = re.compile(r"^```(?:json)?[ \t]*\n(?P<body>.*)\n```$", re.DOTALL)


class _DuplicateKey(Exception):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def json_object(content: str, what: str = "answer", error: type[ValueError] = ValueError) -> dict[str, Any]:
    """The single JSON object in ``content`` (alone or in one ```json fence); raises ``error`` naming ``what``."""
    body = content.strip()
    fenced = _FENCED.match(body)
    if fenced:
        body = fenced.group("body").strip()
    try:
        raw = json.loads(body, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as exc:
        raise error(f"{what} is not a single JSON object ({exc.msg}): {content[:200]!r}") from None
    except _DuplicateKey as exc:
        raise error(f"{what} repeats the key {exc.args[0]!r} (ambiguous: refused): {content[:200]!r}") from None
    if not isinstance(raw, dict):
        raise error(f"{what} is JSON {type(raw).__name__}, not an object: {content[:200]!r}")
    return raw


def validation_problems(exc: ValidationError) -> str:
    """``loc: message`` for every error of a pydantic ``ValidationError``, joined by ``; ``."""
    return "; ".join(
        f"{'.'.join(map(str, e['loc'])) or 'object'}: {str(e['msg']).removeprefix('Value error, ')}" for e in exc.errors(include_url=False)
    )


def parse_model(
    content: str, model: type[M], what: str = "answer", schema_name: str | None = None, error: type[ValueError] = ValueError
) -> M:
    """``content`` parsed strictly as one ``model`` object; raises ``error`` saying what is wrong."""
    raw = json_object(content, what, error)
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise error(f"{what} does not match the {schema_name or model.__name__} schema ({validation_problems(exc)})") from None
