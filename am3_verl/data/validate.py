"""Reject rows: one per bad record, with the record's position, id, the field at fault and the reason.

Structural rules live in the pydantic models (:mod:`am3_verl.dialogue`, the SafeMT model); this module turns
their ``ValidationError`` locations into readable field paths (``turns[2].images[0]``) and writes the
rows to ``rejects.jsonl``. :func:`read_record` is every converter's first step: the record as a dict, or
the reject that says why it is not one (not JSON, not an object, a duplicate key, too deep, invalid text).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

from pydantic import ValidationError

from am3_verl.data.readers import escape_surrogates, json_problem, parse_object

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
        """One JSON line (keys in a fixed order), the same for the same input on every run; always valid UTF-8."""
        return json.dumps(printable(asdict(self)), ensure_ascii=False)


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


def printable(value: Any) -> Any:
    """``value`` as :func:`without_addresses` gives it, with lone surrogates in its strings escaped (see
    :func:`am3_verl.data.readers.escape_surrogates`), so that it can always be written as UTF-8."""
    if isinstance(value, str):
        return escape_surrogates(without_addresses(value))
    if isinstance(value, dict):
        return {printable(k): printable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [printable(v) for v in value]
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
    """The record's id if it is a non-empty string (lone surrogates escaped) or an integer, else None."""
    if isinstance(record, dict):
        value = record.get("id")
        if isinstance(value, str) and value.strip():
            return escape_surrogates(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
    return None


def read_record(position: int, payload: Any) -> dict[str, Any] | Reject:
    """The record at ``position`` as a dict, or the :class:`Reject` saying why it cannot be one.

    Rejected: text that is not JSON or too deeply nested to parse, a value that is not an object (field
    ``<record>``), and any :func:`am3_verl.data.readers.json_problem` (a duplicate key, nesting deeper
    than the limit, a lone surrogate), with the field it is in.
    """
    try:
        record = parse_object(payload)
    except ValueError as exc:
        return Reject(position, None, RECORD_FIELD, f"not a JSON object: {exc}")
    problem = json_problem(record)
    if problem is not None:
        return Reject(position, record_id_of(record), problem[0], problem[1])
    return record


class RejectWriter:
    """Appends reject rows to a JSONL file (created even when empty, so its absence never means 'none').

    The rows go to ``<name>.partial`` next to ``path``; :meth:`close` flushes them to disk and renames
    the file to ``path``, so ``path`` only ever holds a complete file. :meth:`discard` (or leaving the
    writer as a context manager by an exception) deletes the partial file and leaves ``path`` as it was.
    With ``staged=True`` the caller has already chosen a temporary name and syncs and renames it itself:
    the rows go straight to ``path`` and :meth:`close` only closes it.
    """

    def __init__(self, path: Path, staged: bool = False):
        self.path = Path(path)
        self._target = None if staged else self.path
        self._partial = self.path if staged else self.path.with_name(self.path.name + ".partial")
        self._file = open(self._partial, "w", encoding="utf-8")
        self.count = 0
        self.by_field: dict[str, int] = {}
        self.input_name: str | None = None
        """When set, each row gets an ``"input"`` key naming the file it came from (multi-input commands)."""

    def write(self, reject: Reject) -> None:
        """Write one reject row."""
        line = (
            reject.to_json()
            if self.input_name is None
            else json.dumps(printable({"input": self.input_name, **asdict(reject)}), ensure_ascii=False)
        )
        self._file.write(line + "\n")
        self.count += 1
        top = reject.field.split("[")[0].split(".")[0]
        self.by_field[top] = self.by_field.get(top, 0) + 1

    def close(self) -> None:
        """Flush the rows to disk and close the file, then rename it to ``path`` (safe to call more than once).

        If that fails (a full disk), the partial file is deleted and the error raised.
        """
        if self._file.closed:
            return
        try:
            if self._target is not None:
                self._file.flush()
                os.fsync(self._file.fileno())
            self._file.close()
            if self._target is not None:
                os.replace(self._partial, self._target)
        except BaseException:
            self.discard()
            raise

    def discard(self) -> None:
        """Throw the rows away: close the file and delete it (``path`` is left as it was unless ``staged``)."""
        try:
            self._file.close()
        except OSError:
            pass  # the rows are being thrown away: a failed flush does not matter
        self._partial.unlink(missing_ok=True)

    def __enter__(self) -> "RejectWriter":
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.discard()
