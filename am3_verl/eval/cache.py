"""Append-only JSONL caches that make an evaluation run resumable.

Each completed unit of work (a generated answer, a judgment, a pairwise verdict) is appended to its
cache file as one line ``{"key": <sha256 of the inputs>, ...}`` and flushed at once, so a run killed at
any moment loses only the work that was in flight. On open, the file is read back into memory; a last
line cut short by a kill is cut off the file (it was never complete), and any other unreadable line is
an error naming the file and line. Keys come from :func:`cache_key` over everything that decides the
result, so a changed input, model, judge or parameter is a cache miss, never a stale hit.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Any


def cache_key(*parts: Any) -> str:
    """A SHA-256 over ``parts`` (str, bytes, or JSON-able values), each tagged and length-prefixed."""
    h = hashlib.sha256()

    def feed(part: Any) -> None:
        if isinstance(part, bytes):
            data, tag = part, b"b"
        elif isinstance(part, str):
            data, tag = part.encode("utf-8"), b"s"
        else:
            data, tag = json.dumps(part, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode("utf-8"), b"j"
        h.update(tag + len(data).to_bytes(8, "little"))
        h.update(data)

    for part in parts:
        feed(part)
    return h.hexdigest()


class CacheFormatError(ValueError):
    """A cache file holds a line that is not a complete record (other than a cut-off last line)."""


class JsonlCache:
    """A key -> record map persisted as an append-only JSONL file (one writer process at a time)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._records: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self.loaded = 0
        """Records found on disk when the cache was opened."""
        self.repaired = False
        """True when a cut-off last line was removed on open."""
        self._load()
        self._fh = self.path.open("a", encoding="utf-8")

    def _load(self) -> None:
        if not self.path.exists():
            return
        raw = self.path.read_bytes()
        if raw and not raw.endswith(b"\n"):
            # the process was killed mid-write: drop the incomplete last line so appends start clean
            keep = raw.rfind(b"\n") + 1
            with self.path.open("r+b") as fh:
                fh.truncate(keep)
            raw = raw[:keep]
            self.repaired = True
        for number, line in enumerate(raw.decode("utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise CacheFormatError(f"{self.path} line {number} is not JSON ({exc.msg}); delete the file to start over") from None
            if not isinstance(record, dict) or not isinstance(record.get("key"), str):
                raise CacheFormatError(f"{self.path} line {number} has no string 'key'; delete the file to start over")
            self._records[record["key"]] = record
        self.loaded = len(self._records)

    def get(self, key: str) -> dict[str, Any] | None:
        """The record stored under ``key``, or None."""
        return self._records.get(key)

    def __contains__(self, key: str) -> bool:
        return key in self._records

    def __len__(self) -> int:
        return len(self._records)

    def put(self, key: str, record: dict[str, Any]) -> dict[str, Any]:
        """Store ``record`` under ``key`` and append it to the file (flushed before returning)."""
        full = {"key": key, **record}
        line = json.dumps(full, ensure_ascii=False, separators=(",", ":")) + "\n"
        with self._lock:
            self._records[key] = full
            self._fh.write(line)
            self._fh.flush()
        return full

    def close(self) -> None:
        """Flush to the operating system and close the file."""
        with self._lock:
            if not self._fh.closed:
                self._fh.flush()
                os.fsync(self._fh.fileno())
                self._fh.close()

    def __enter__(self) -> "JsonlCache":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
