"""Reject rows: one per bad record, with the record's position, id, the field at fault and the reason.

Structural rules live in the pydantic models (:mod:`am3_verl.dialogue`, the SafeMT model); this module turns
their ``ValidationError`` locations into readable field paths (``turns[2].images[0]``) and writes the
rows to ``rejects.jsonl``.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

from pydantic import ValidationError

# Location elements pydantic adds for the branches of a union (``str | ImageBytes``); not field names.
_UNION_TAGS = {"str", "int", "ImageBytes", "list[str]"}
REJECTS_FILE = "rejects.jsonl"
"""The file every data command (converters, builders) and the evaluation writes its rejected records to."""
RECORD_FIELD = "<record>"
"""The ``field`` of a reject that concerns the whole record (not JSON, not an object)."""


@dataclass(frozen=True)
class Reject:
    """Why one input record was not converted."""

    position: int
    """0-based record number in the input (JSONL: non-blank line number; JSON/parquet: row number)."""
    id: str | None
    """The record's id when it has a readable one, else None."""
    field: str
    """The first field at fault, as a path like ``turns[1].images[0]``, or ``<record>``."""
    reason: str
    """What is wrong with it."""
    other_errors: list[dict[str, str]] = field(default_factory=list)
    """Further problems in the same record, each ``{"field", "reason"}``."""

    def to_json(self) -> str:
        """One JSON line (keys in a fixed order), the same for the same input on every run."""
        return json.dumps(without_addresses(asdict(self)), ensure_ascii=False)


_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def without_addresses(value: Any) -> Any:
    """``value`` with object addresses (`` at 0x7f...``, from reprs in error messages) removed from its strings."""
    if isinstance(value, str):
        return _ADDRESS.sub("", value)
    if isinstance(value, dict):
        return {k: without_addresses(v) for k, v in value.items()}
    if isinstance(value, list):
        return [without_addresses(v) for v in value]
    return value


def format_loc(loc: Iterable[Any]) -> str:
    """Turn a pydantic location tuple into a field path: ``('turns', 2, 'user')`` -> ``turns[2].user``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in _UNION_TAGS or str(part).startswith(("function-", "tagged-union")):
            continue
        else:
            out += ("." if out else "") + str(part)
    return out or RECORD_FIELD


def _reason(error: dict[str, Any]) -> str:
    message = str(error["msg"])
    return message.removeprefix("Value error, ").removeprefix("Assertion failed, ")


def reject_from_validation_error(position: int, record_id: str | None, error: ValidationError) -> Reject:
    """One reject for a record whose model validation failed; union-branch errors on a field are merged."""
    by_field: dict[str, list[str]] = {}
    for item in error.errors(include_url=False):
        reasons = by_field.setdefault(format_loc(item["loc"]), [])
        reason = _reason(item)
        if reason not in reasons:
            reasons.append(reason)
    problems = [(name, " or ".join(reasons)) for name, reasons in by_field.items()]
    first_field, first_reason = problems[0]
    return Reject(position, record_id, first_field, first_reason, [{"field": f, "reason": r} for f, r in problems[1:]])


def record_id_of(record: Any) -> str | None:
    """The record's id if it is a non-empty string or an integer, else None."""
    if isinstance(record, dict):
        value = record.get("id")
        if isinstance(value, str) and value.strip():
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
    return None


class RejectWriter:
    """Appends reject rows to a JSONL file (created even when empty, so its absence never means 'none')."""

    def __init__(self, path: Path):
        self.path = path
        self._file = open(path, "w", encoding="utf-8")
        self.count = 0
        self.by_field: dict[str, int] = {}
        self.input_name: str | None = None
        """When set, each row gets an ``"input"`` key naming the file it came from (multi-input commands)."""

    def write(self, reject: Reject) -> None:
        """Write one reject row."""
        line = (
            reject.to_json()
            if self.input_name is None
            else json.dumps(without_addresses({"input": self.input_name, **asdict(reject)}), ensure_ascii=False)
        )
        self._file.write(line + "\n")
        self.count += 1
        top = reject.field.split("[")[0].split(".")[0]
        self.by_field[top] = self.by_field.get(top, 0) + 1

    def close(self) -> None:
        """Flush and close the file."""
        self._file.close()
