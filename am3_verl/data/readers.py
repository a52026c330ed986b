"""Stream records from the input formats the converters accept, one at a time.

Formats (chosen by the path):

* ``*.jsonl`` – one JSON object a line; blank lines are not records and are skipped.
* ``*.json`` – a JSON array of objects (SafeMT's public form) or, if it does not start with ``[``, JSONL.
  The array's text is read whole and cut into one text per element (keep large inline-image data in
  JSONL or parquet instead); like JSONL lines, each element is parsed by the worker that validates it,
  so one element nested too deeply to parse is one reject, not a failed run.
* ``*.parquet`` – rows are records; read in small batches.
* a folder written by ``datasets.Dataset.save_to_disk`` (``state.json`` + ``*.arrow``) – rows are records.

Records are handed on as they are read: JSONL lines and array elements stay text (parsed by the worker
that validates them; a duplicate key, nesting too deep, or a lone surrogate makes a record a reject, see
:func:`json_problem`), table rows become dicts. Parquet and ``datasets`` rows are tabular, so absent optional fields arrive as
nulls and images as ``{"bytes", "path"}`` structs (``datasets.Image``): :func:`normalise_nulls` and
:func:`normalise_image_entry` map those back to the JSON form before validation.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from am3_verl.data.errors import DataPrepError

_BATCH_ROWS = 64


@dataclass(frozen=True)
class RecordSource:
    """An input file or folder of records, with the folder that relative image paths start from."""

    path: Path
    kind: str
    """``jsonl``, ``json_array``, ``parquet`` or ``datasets``."""
    base_dir: Path

    def payloads(self) -> Iterator[tuple[int, str | dict[str, Any]]]:
        """Yield ``(position, record)`` in file order: JSON text for JSONL lines and array elements, dicts otherwise."""
        try:
            if self.kind == "jsonl":
                yield from self._jsonl_lines()
            elif self.kind == "json_array":
                yield from enumerate(self._json_array())
            else:
                position = 0
                for batch in self._batches(columns=None):
                    for row in batch.to_pylist():
                        yield position, row
                        position += 1
        except (OSError, UnicodeDecodeError, pa.ArrowException) as exc:
            raise DataPrepError(f"cannot read {self.path}: {exc}") from exc

    def keys(self, fields: tuple[str, ...]) -> Iterator[tuple[int, dict[str, Any] | None]]:
        """Yield ``(position, {field: value})`` for a cheap first pass; None where the record is not an object
        or one of the fields holds text that is not valid Unicode.

        Tables read only the named columns (no image bytes); JSON records are parsed and trimmed.
        """
        if self.kind in ("parquet", "datasets"):
            try:
                position = 0
                for batch in self._batches(columns=fields):
                    for row in batch.to_pylist():
                        yield position, row
                        position += 1
            except (OSError, pa.ArrowException) as exc:
                raise DataPrepError(f"cannot read {self.path}: {exc}") from exc
            return
        for position, payload in self.payloads():
            try:
                record = parse_object(payload)
            except ValueError:
                yield position, None  # the worker rejects it, naming why
                continue
            picked = {f: record.get(f) for f in fields}
            text_ok = all(is_unicode(v) for v in picked.values() if isinstance(v, str))
            yield position, (picked if text_ok else None)  # invalid text: rejected by the worker too

    def _jsonl_lines(self) -> Iterator[tuple[int, str]]:
        position = 0
        with open(self.path, encoding="utf-8-sig") as handle:  # -sig: a leading UTF-8 BOM is not part of record 0
            for line in handle:
                if line.strip():
                    yield position, line
                    position += 1

    def _json_array(self) -> Iterator[str]:
        text = self.path.read_text(encoding="utf-8-sig")
        try:
            yield from json_array_elements(text)
        except ValueError as exc:
            raise DataPrepError(f"{self.path} is not valid JSON: {exc}") from exc

    def _batches(self, columns: tuple[str, ...] | None) -> Iterator[pa.RecordBatch]:
        if self.kind == "parquet":
            with pq.ParquetFile(self.path) as parquet:
                names = set(parquet.schema_arrow.names)
                wanted = None if columns is None else [c for c in columns if c in names]
                yield from parquet.iter_batches(batch_size=_BATCH_ROWS, columns=wanted)
            return
        for arrow_file in _datasets_files(self.path):
            with pa.memory_map(str(arrow_file)) as source:
                reader = pa.ipc.open_stream(source)
                names = set(reader.schema.names)
                for batch in reader:
                    if columns is not None:
                        batch = batch.select([c for c in columns if c in names])
                    yield from (batch.slice(i, _BATCH_ROWS) for i in range(0, batch.num_rows, _BATCH_ROWS))


def _datasets_files(folder: Path) -> list[Path]:
    state = json.loads((folder / "state.json").read_text(encoding="utf-8"))
    files = [folder / entry["filename"] for entry in state.get("_data_files", [])]
    if not files:
        raise DataPrepError(f"{folder}/state.json lists no data files")
    for file in files:
        if not file.is_file():
            raise DataPrepError(f"{folder}/state.json lists {file.name}, which does not exist")
    return files


def open_source(path: str | Path, image_root: str | Path | None = None) -> RecordSource:
    """Identify the format of ``path`` and check that it can be opened; raises :class:`DataPrepError` if not.

    ``image_root`` overrides the folder relative image paths start from (default: the file's folder, or
    the ``datasets`` folder itself).
    """
    p = Path(path)
    if not p.exists():
        raise DataPrepError(f"input {p} does not exist")
    if p.is_dir():
        if (p / "dataset_dict.json").is_file():
            splits = json.loads((p / "dataset_dict.json").read_text(encoding="utf-8")).get("splits", [])
            raise DataPrepError(f"{p} is a DatasetDict; pass one split folder instead (one of: {', '.join(splits)})")
        if not (p / "state.json").is_file():
            raise DataPrepError(f"{p} is a folder but not a saved `datasets` Dataset (no state.json)")
        kind, base = "datasets", p
    else:
        suffix = p.suffix.lower()
        if suffix == ".parquet":
            kind = "parquet"
            try:
                pq.read_metadata(p)
            except (OSError, pa.ArrowException) as exc:
                raise DataPrepError(f"cannot read {p} as parquet: {exc}") from exc
        elif suffix in (".jsonl", ".json"):
            try:
                with open(p, encoding="utf-8-sig") as handle:
                    head = handle.read(4096).lstrip()
            except (OSError, UnicodeDecodeError) as exc:
                raise DataPrepError(f"cannot read {p}: {exc}") from exc
            kind = "json_array" if suffix == ".json" and head.startswith("[") else "jsonl"
        else:
            raise DataPrepError(f"unsupported input {p}: expected .jsonl, .json, .parquet or a saved datasets folder")
        base = p.parent
    if image_root is not None:
        base = Path(image_root)
        if not base.is_dir():
            raise DataPrepError(f"image root {base} is not a directory")
    return RecordSource(path=p, kind=kind, base_dir=base.resolve())


_WHITESPACE = re.compile(r"[ \t\n\r]*")
_STRING_OR_BRACKET = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]', re.DOTALL)


def json_array_elements(text: str) -> Iterator[str]:
    """The JSON text of each element of the array ``text``, in order; raises ValueError if it is not a JSON array.

    Elements are delimited with the C decoder; one nested too deeply for it (RecursionError) is
    delimited by counting brackets instead and handed on as text, for its record to be rejected.
    """
    decoder = json.JSONDecoder()
    pos = _WHITESPACE.match(text).end()
    if not text.startswith("[", pos):
        raise ValueError("the file does not hold a JSON array")
    pos = _WHITESPACE.match(text, pos + 1).end()
    if text.startswith("]", pos):
        pos += 1
    else:
        while True:
            try:
                end = decoder.raw_decode(text, pos)[1]
            except RecursionError:
                end = _end_of_nested_value(text, pos)
            yield text[pos:end]
            pos = _WHITESPACE.match(text, end).end()
            if text.startswith(",", pos):
                pos = _WHITESPACE.match(text, pos + 1).end()
            elif text.startswith("]", pos):
                pos += 1
                break
            else:
                raise ValueError(f"expected ',' or ']' at character {pos}")
    if _WHITESPACE.match(text, pos).end() != len(text):
        raise ValueError(f"extra data after the array at character {pos}")


def _end_of_nested_value(text: str, start: int) -> int:
    """Where the array or object starting at ``start`` ends, found without recursion (strings skipped whole)."""
    depth = 0
    for token in _STRING_OR_BRACKET.finditer(text, start):
        bracket = token.group()
        if bracket in "[{":
            depth += 1
        elif bracket in "]}":
            depth -= 1
            if depth == 0:
                return token.end()
    raise ValueError(f"unbalanced brackets in the element at character {start}")


MAX_JSON_DEPTH = 64
"""Records nested deeper than this are rejected (far below where Python's JSON parser gives up)."""


class _DuplicateKeys(dict):
    """A parsed JSON object in which some key appeared more than once (the last value is kept)."""

    duplicates: list[str]


def _no_silent_overwrite(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``object_pairs_hook``: a dict, or a :class:`_DuplicateKeys` that remembers the repeated keys."""
    record = dict(pairs)
    if len(record) == len(pairs):
        return record
    marked = _DuplicateKeys(record)
    seen: set[str] = set()
    marked.duplicates = [key for key, _ in pairs if key in seen or seen.add(key)]
    return marked


def load_json(text: str) -> Any:
    """``json.loads`` that keeps track of duplicate keys (see :func:`json_problem`); ValueError instead of RecursionError."""
    try:
        return json.loads(text, object_pairs_hook=_no_silent_overwrite)
    except RecursionError:
        raise ValueError("JSON nested too deeply for the parser") from None


def json_problem(value: Any) -> tuple[str, str] | None:
    """The first ``(field path, reason)`` that makes a parsed record unusable, in document order; None if none.

    Checked: duplicate keys, nesting deeper than :data:`MAX_JSON_DEPTH`, and text (keys or values) holding a
    lone UTF-16 surrogate (JSON ``"\\ud800"``), which is not Unicode and cannot be written as UTF-8.
    Iterative, so it never recurses however the value is nested.
    """
    stack: list[tuple[Any, tuple[Any, ...]]] = [(value, ())]
    while stack:
        item, loc = stack.pop()
        if len(loc) > MAX_JSON_DEPTH:
            return field_path(loc[:MAX_JSON_DEPTH]), f"nested more than {MAX_JSON_DEPTH} levels deep"
        if isinstance(item, dict):
            if isinstance(item, _DuplicateKeys):
                key = item.duplicates[0]
                return field_path((*loc, key)), f"key {escape_surrogates(key)!r} appears more than once in one object"
            for key in item:
                if isinstance(key, str) and not is_unicode(key):
                    return field_path((*loc, key)), "a key holds a lone UTF-16 surrogate (e.g. \\ud800), which is not valid text"
            stack.extend((child, (*loc, key)) for key, child in reversed(item.items()))
        elif isinstance(item, (list, tuple)):
            stack.extend((child, (*loc, i)) for i, child in reversed(list(enumerate(item))))
        elif isinstance(item, str) and not is_unicode(item):
            return field_path(loc), "text holds a lone UTF-16 surrogate (e.g. \\ud800), which is not valid text"
    return None


def is_unicode(text: str) -> bool:
    """Whether ``text`` can be written as UTF-8 (no lone surrogates)."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def escape_surrogates(text: str) -> str:
    """``text`` with each lone surrogate written as its escape (``\\ud800`` as six characters): always valid text."""
    return text if is_unicode(text) else text.encode("utf-8", "backslashreplace").decode("utf-8")


def field_path(loc: tuple[Any, ...]) -> str:
    """``('turns', 0, 'user')`` -> ``turns[0].user``; the empty path is ``<record>``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else ("." if out else "") + escape_surrogates(str(part))
    return out or "<record>"


def _json_type(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def parse_object(payload: str | dict[str, Any]) -> dict[str, Any]:
    """The record as a dict, as parsed (see :func:`json_problem` for what is not checked here).

    Raises ValueError when a JSON text does not parse (nesting too deep for the parser included) or
    does not hold an object.
    """
    if isinstance(payload, dict):
        return payload
    if not isinstance(payload, str):
        raise ValueError(f"expected a JSON object, found {_json_type(payload)}")
    record = load_json(payload)
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, found {_json_type(record)}")
    return record


def parse_payload(payload: str | dict[str, Any]) -> dict[str, Any]:
    """The record as a dict; raises ValueError as :func:`parse_object` does, and for any :func:`json_problem`
    (duplicate keys, nesting deeper than :data:`MAX_JSON_DEPTH`, lone surrogates), naming the field."""
    record = parse_object(payload)
    problem = json_problem(record)
    if problem is not None:
        raise ValueError(f"{problem[0]}: {problem[1]}")
    return record


def normalise_image_entry(entry: Any) -> Any:
    """Map a ``datasets.Image`` struct ``{"bytes", "path"}`` to ``{"bytes": ...}`` or the path; else unchanged."""
    if isinstance(entry, dict) and set(entry) <= {"bytes", "path"} and "path" in entry:
        if entry.get("bytes") is not None:
            return {"bytes": entry["bytes"]}
        if entry.get("path") is not None:
            return entry["path"]
    return entry


def normalise_nulls(record: dict[str, Any], optional: tuple[str, ...]) -> dict[str, Any]:
    """Drop the ``optional`` keys whose value is null (how tables spell 'absent')."""
    return {k: v for k, v in record.items() if not (k in optional and v is None)}
