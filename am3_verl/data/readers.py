"""Stream records from the input formats the converters accept, one at a time.

Formats (chosen by the path):

* ``*.jsonl`` – one JSON object a line; blank lines are not records and are skipped.
* ``*.json`` – a JSON array of objects (SafeMT's public form) or, if it does not start with ``[``, JSONL.
  An array is parsed whole: keep large inline-image data in JSONL or parquet instead.
* ``*.parquet`` – rows are records; read in small batches.
* a folder written by ``datasets.Dataset.save_to_disk`` (``state.json`` + ``*.arrow``) – rows are records.

Records are handed on as they are read: JSONL lines stay text (parsed by the worker that validates them),
table rows become dicts. Parquet and ``datasets`` rows are tabular, so absent optional fields arrive as
nulls and images as ``{"bytes", "path"}`` structs (``datasets.Image``): :func:`normalise_nulls` and
:func:`normalise_image_entry` map those back to the JSON form before validation.
"""

from __future__ import annotations

import json
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
        """Yield ``(position, record)`` in file order: JSON text for JSONL lines, dicts otherwise."""
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
        """Yield ``(position, {field: value})`` for a cheap first pass; None where the record is not an object.

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
            record = payload
            if isinstance(payload, str):
                try:
                    record = json.loads(payload)
                except ValueError:
                    record = None
            yield position, ({f: record.get(f) for f in fields} if isinstance(record, dict) else None)

    def _jsonl_lines(self) -> Iterator[tuple[int, str]]:
        position = 0
        with open(self.path, encoding="utf-8-sig") as handle:  # -sig: a leading UTF-8 BOM is not part of record 0
            for line in handle:
                if line.strip():
                    yield position, line
                    position += 1

    def _json_array(self) -> list[Any]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8-sig"))
        except ValueError as exc:
            raise DataPrepError(f"{self.path} is not valid JSON: {exc}") from exc
        if not isinstance(data, list):
            raise DataPrepError(f"{self.path} must hold a JSON array of records, found {type(data).__name__}")
        return data

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


def parse_payload(payload: str | dict[str, Any]) -> dict[str, Any]:
    """The record as a dict; raises ValueError when a JSON line does not hold an object."""
    if isinstance(payload, dict):
        return payload
    if not isinstance(payload, str):  # an element of a JSON array that is not an object (7, null, [...])
        raise ValueError(f"expected a JSON object, found {type(payload).__name__ if payload is not None else 'null'}")
    record = json.loads(payload)
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, found {type(record).__name__}")
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
