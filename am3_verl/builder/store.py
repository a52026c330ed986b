"""The on-disk checkpoint store: one JSON file per item, content-addressed image blobs, a run manifest.

Layout under the store root (``<output_dir>/.build`` for the InterSafe-V builder)::

    run.json               the content fingerprint of the config that produced the checkpoints
    items/<key>.json       one record per item, rewritten after every call
    blobs/<sha256>.<ext>   every image an item refers to (seed images and drawn ones)

Every write goes to a temporary file in the same folder and is moved over the old file with
``os.replace``, which is atomic: a reader (or a rerun after ``kill -9``) sees the old record or the new
one, never a torn one. A blob is written before any record that names it. An exclusive ``flock`` on
``lock`` keeps two runs from working on one store at once (the kernel releases it when a process dies).
"""

from __future__ import annotations

import asyncio
import collections
import fcntl
import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Generic, Iterator, TypeVar

from pydantic import BaseModel, ValidationError

from am3_verl.builder.config import BuilderError
from am3_verl.clients.images import sniff_mime

M = TypeVar("M", bound=BaseModel)

BLOB_CACHE_BYTES = 64 * 1024**2
"""Upper bound on the image bytes a store keeps in memory (blobs never change, so caching is safe)."""
FILE_MODE = 0o644
"""Permission bits of every file the builder writes: mkstemp creates 0600, the outputs are meant to be shared."""
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")
_EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/gif": "gif", "image/bmp": "bmp", "image/webp": "webp"}


def atomic_write(path: Path, data: bytes, fsync: bool = False) -> None:
    """Write ``data`` to ``path`` so that the file is either the old one or the complete new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, FILE_MODE)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            if fsync:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def safe_stem(text: str) -> str:
    """``text`` if it is a safe file name stem, else a sanitised version with a hash of ``text`` appended."""
    cleaned = _UNSAFE.sub("_", text).strip("._")[:120]
    if cleaned == text:
        return text
    return f"{cleaned or 'x'}-{hashlib.sha1(text.encode('utf-8')).hexdigest()[:8]}"


def key_filename(key: str) -> str:
    """A file name for ``key``: readable, safe on every filesystem, and distinct for distinct keys."""
    readable = _UNSAFE.sub("_", key).strip("._")[:80] or "item"
    return f"{readable}-{hashlib.sha1(key.encode('utf-8')).hexdigest()[:10]}.json"


def image_extension(data: bytes) -> str:
    """``png``/``jpg``/... from the encoded bytes; ``ValueError`` for unknown formats."""
    return _EXTENSIONS[sniff_mime(data)]


class CheckpointStore(Generic[M]):
    """Records of type ``model`` by key, plus image blobs, under ``root``."""

    def __init__(self, root: Path, model: type[M], *, fsync: bool = False) -> None:
        self.root = Path(root)
        self.model = model
        self.fsync = fsync
        self.items_dir = self.root / "items"
        self.blobs_dir = self.root / "blobs"
        self.items_dir.mkdir(parents=True, exist_ok=True)
        self.blobs_dir.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.root / "lock", "a+b")
        try:
            fcntl.flock(self._lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise BuilderError(f"another run is using {self.root}; wait for it to finish or use another output folder") from None
        for folder in (self.items_dir, self.blobs_dir):  # temporary files of a killed run
            for stale in folder.glob(".*.tmp"):
                stale.unlink(missing_ok=True)
        self.writes = 0
        """Records written by this store object (for tests and the summary)."""
        self._key_locks: dict[str, asyncio.Lock] = {}
        self._blob_cache: collections.OrderedDict[str, bytes] = collections.OrderedDict()
        self._blob_cache_bytes = 0

    def close(self) -> None:
        """Release the store's lock (a later run may open it)."""
        if not self._lock.closed:
            fcntl.flock(self._lock.fileno(), fcntl.LOCK_UN)
            self._lock.close()

    def __enter__(self) -> "CheckpointStore[M]":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def path(self, key: str) -> Path:
        """The record file of ``key``."""
        return self.items_dir / key_filename(key)

    def load(self, key: str) -> M | None:
        """The saved record of ``key``, or None; a record that does not parse is a :class:`BuilderError`."""
        path = self.path(key)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            return self.model.model_validate_json(raw)
        except ValidationError as exc:
            raise BuilderError(
                f"checkpoint {path} does not match this version of the builder ({exc.error_count()} problem(s), "
                f"first: {exc.errors()[0]['msg']}); use a new output folder"
            ) from None

    def save(self, key: str, record: M) -> None:
        """Replace the record of ``key`` atomically."""
        atomic_write(self.path(key), record.model_dump_json().encode("utf-8"), self.fsync)
        self.writes += 1

    async def save_async(self, key: str, record: M) -> None:
        """:meth:`save` with the file work in a worker thread, so slow filesystems do not stall the event
        loop. The record is serialised now; writes of one key happen in call order (a FIFO lock per key)."""
        data = record.model_dump_json().encode("utf-8")
        lock = self._key_locks.setdefault(key, asyncio.Lock())
        async with lock:
            await asyncio.to_thread(atomic_write, self.path(key), data, self.fsync)
            self.writes += 1

    def put_blob(self, data: bytes) -> str:
        """Store image bytes (once per content) and return the blob name ``<sha256>.<ext>``."""
        name = f"{hashlib.sha256(data).hexdigest()}.{image_extension(data)}"
        path = self.blobs_dir / name
        if not path.exists():
            atomic_write(path, data, self.fsync)
        return name

    def blob_path(self, name: str) -> Path:
        """Where blob ``name`` lives."""
        return self.blobs_dir / name

    def read_blob(self, name: str) -> bytes:
        """The bytes of blob ``name`` (recently used blobs are kept in memory, up to :data:`BLOB_CACHE_BYTES`);
        a missing blob is a :class:`BuilderError` (the store was tampered with)."""
        data = self._blob_cache.get(name)
        if data is not None:
            self._blob_cache.move_to_end(name)
            return data
        try:
            data = self.blob_path(name).read_bytes()
        except FileNotFoundError:
            raise BuilderError(f"image blob {name} is missing from {self.blobs_dir}; the checkpoint store is damaged") from None
        self._blob_cache[name] = data
        self._blob_cache_bytes += len(data)
        while self._blob_cache_bytes > BLOB_CACHE_BYTES and self._blob_cache:
            _, dropped = self._blob_cache.popitem(last=False)
            self._blob_cache_bytes -= len(dropped)
        return data

    def read_manifest(self) -> dict | None:
        """The saved ``run.json``, or None."""
        try:
            return json.loads((self.root / "run.json").read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None

    def write_manifest(self, manifest: dict) -> None:
        """Save ``run.json``."""
        atomic_write(self.root / "run.json", json.dumps(manifest, indent=2, sort_keys=True).encode("utf-8"), True)

    def iter_records(self) -> Iterator[M]:
        """Every record on disk (any order)."""
        for path in sorted(self.items_dir.glob("*.json")):
            yield self.model.model_validate_json(path.read_bytes())
