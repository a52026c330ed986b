"""Evaluation inputs: the parquet files of data preparation -> :class:`EvalItem` s, with rejects.

Accepted row forms (one file may hold any mix; several files may be given):

* **prompt form** (``rl_val.parquet``, ``safemt.parquet``, ``refusal_eval.parquet``): ``prompt`` = chat
  messages ending on a user message (earlier assistant messages are the pre-filled history, as in
  SafeMT), ``images`` = ``[{"bytes"}]`` consumed in order by the ``<image>`` placeholders of the
  messages, and optionally ``am3_later_turns`` = further user turns ``{"user", "images", "assistant"}``
  (InterSafe-V). The first turn's reference reply of an InterSafe-V row is
  ``extra_info.reference_first_reply``;
* **messages form** (``cold_start*.parquet``): ``messages`` ending on an assistant message, which is kept
  as the final turn's reference reply.

What an item is about comes from a small adapter per ``data_source`` (:data:`ADAPTERS`): its category
and whether it is a harmful request (benign items measure over-refusal). A row of another data source
must carry ``extra_info.category`` and ``extra_info.harmful``. Every bad row becomes a :class:`UnevaluableRow`
naming the file, row, id and field; nothing is dropped silently.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import pyarrow.parquet as pq

from am3_verl.dialogue import BENIGN, IMAGE_PLACEHOLDER
from am3_verl.clients.images import sniff_mime


@dataclass(frozen=True)
class EvalTurn:
    """One user turn: text with ``<image>`` placeholders, its images (encoded bytes) and the reference reply."""

    user_text: str
    images: tuple[bytes, ...] = ()
    reference: str | None = None


@dataclass
class EvalItem:
    """One item to evaluate."""

    uid: str
    """Unique over all inputs: ``<data_source>/<id>/r<rounds>`` (SafeMT reuses an id across rounds)."""
    id: str
    data_source: str
    category: str
    harmful: bool
    turns: list[EvalTurn]
    system: str | None = None
    has_history: bool = False
    """The prompt itself holds assistant messages (a pre-filled history), or the source is answered
    prefilled by default (SafeMT, whose round-1 items have an empty history)."""
    origin: str = ""
    """``file:row`` for error messages."""
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def rounds(self) -> int:
        """Number of user turns."""
        return len(self.turns)


@dataclass(frozen=True)
class UnevaluableRow:
    """An evaluation-parquet row that cannot be evaluated (one line of the run's ``rejects.jsonl``).

    Not :class:`am3_verl.data.validate.Reject`: that is an input record a converter did not convert."""

    file: str
    row: int
    id: str | None
    field: str
    reason: str

    def as_dict(self) -> dict[str, Any]:
        """JSON form for ``rejects.jsonl``."""
        return {"file": self.file, "row": self.row, "id": self.id, "field": self.field, "reason": self.reason}

    def __str__(self) -> str:
        return f"{self.file} row {self.row} (id {self.id!r}) field {self.field}: {self.reason}"


class RowError(ValueError):
    """A row problem: ``field`` names where it is."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(reason)
        self.field = field


@dataclass(frozen=True)
class Adapter:
    """How one data source's rows say what they are about."""

    category: Callable[[dict[str, Any]], str]
    harmful: Callable[[dict[str, Any], str], bool]
    prefilled: bool = False
    """``--mode auto`` runs this source's items prefilled even when the history is empty (SafeMT round 1)."""


def _info(row: dict[str, Any]) -> dict[str, Any]:
    info = row.get("extra_info")
    return info if isinstance(info, dict) else {}


def _required(row: dict[str, Any], *paths: str) -> Any:
    """The first present, non-empty value among ``paths`` (``extra_info.x`` or a column); RowError if none."""
    for path in paths:
        value = _info(row).get(path.split(".", 1)[1]) if path.startswith("extra_info.") else row.get(path)
        if value is not None and value != "":
            return value
    raise RowError(paths[0], "missing")


def _bool(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    raise RowError(where, f"must be true or false, got {value!r}")


ADAPTERS: dict[str, Adapter] = {
    "intersafe_v": Adapter(
        category=lambda row: str(_required(row, "extra_info.category")),
        harmful=lambda row, category: _bool(_required(row, "extra_info.harmful"), "extra_info.harmful"),
    ),
    "safemt": Adapter(
        category=lambda row: str(_required(row, "scenario", "extra_info.scenario")),
        harmful=lambda row, category: True,  # every SafeMT item is a harmful request in disguise
        prefilled=True,
    ),
    "refusal_vqa": Adapter(
        category=lambda row: f"refusal_{_required(row, 'extra_info.domain')}",
        harmful=lambda row, category: True,  # requests the model should decline (harmful or needing a professional)
    ),
    "general_vqa": Adapter(category=lambda row: BENIGN, harmful=lambda row, category: False),
}
"""Data source -> adapter. Add an entry to support a new benchmark whose rows lack extra_info.category/harmful."""

_GENERIC = Adapter(
    category=lambda row: str(_required(row, "extra_info.category")),
    harmful=lambda row, category: _bool(_required(row, "extra_info.harmful"), "extra_info.harmful"),
)


def _image_list(value: Any, where: str) -> list[bytes]:
    if value is None:
        return []
    if not isinstance(value, (list, tuple)):
        raise RowError(where, f"must be a list of {{'bytes': ...}} images, got {type(value).__name__}")
    images = []
    for k, entry in enumerate(value):
        data = entry.get("bytes") if isinstance(entry, dict) else None
        if not isinstance(data, (bytes, bytearray)) or not data:
            raise RowError(f"{where}[{k}]", "not an image with non-empty 'bytes'")
        try:
            sniff_mime(bytes(data))
        except ValueError as exc:
            raise RowError(f"{where}[{k}]", str(exc)) from None
        images.append(bytes(data))
    return images


def _messages(row: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    for column in ("prompt", "messages"):
        value = row.get(column)
        if value is not None:
            if not isinstance(value, (list, tuple)) or not value:
                raise RowError(column, "must be a non-empty list of {role, content} messages")
            return column, list(value)
    raise RowError("prompt", "missing (neither a 'prompt' nor a 'messages' column)")


def _turns_from_row(row: dict[str, Any]) -> tuple[list[EvalTurn], str | None, bool]:
    column, messages = _messages(row)
    images = _image_list(row.get("images"), "images")
    system: str | None = None
    turns: list[list[Any]] = []  # [user_text, n_images, reference]
    cursor = 0
    for i, message in enumerate(messages):
        where = f"{column}[{i}]"
        if not isinstance(message, dict):
            raise RowError(where, "not a {role, content} message")
        role, content = message.get("role"), message.get("content")
        if not isinstance(content, str):
            raise RowError(f"{where}.content", f"must be a string, got {type(content).__name__}")
        if role == "system":
            if i != 0:
                raise RowError(f"{where}.role", "a system message may only come first")
            system = content
        elif role == "user":
            if turns and turns[-1][2] is None:
                raise RowError(f"{where}.role", "two user messages in a row (turns must alternate user/assistant)")
            n = content.count(IMAGE_PLACEHOLDER)
            turns.append([content, images[cursor : cursor + n], None])
            cursor += n
        elif role == "assistant":
            if not turns or turns[-1][2] is not None:
                raise RowError(f"{where}.role", "an assistant message that does not follow a user message")
            turns[-1][2] = content
        else:
            raise RowError(f"{where}.role", f"{role!r} is not system, user or assistant")
    if not turns:
        raise RowError(column, "holds no user message")
    if cursor != len(images):
        raise RowError("images", f"{len(images)} image(s) but {cursor} {IMAGE_PLACEHOLDER} placeholder(s) in the messages")
    has_history = len(turns) > 1 and all(t[2] is not None for t in turns[:-1])
    if column == "prompt" and turns[-1][2] is not None:
        raise RowError(f"{column}[{len(messages) - 1}]", "the prompt must end with the user message to answer")
    if column == "prompt" and len(turns) == 1 and turns[0][2] is None:
        first_reply = _info(row).get("reference_first_reply")
        if isinstance(first_reply, str) and first_reply:
            turns[0][2] = first_reply
    later = row.get("am3_later_turns")
    if later is not None:
        if not isinstance(later, (list, tuple)):
            raise RowError("am3_later_turns", "must be a list of {user, images, assistant}")
        if has_history:
            raise RowError("am3_later_turns", "a row cannot have both a pre-filled history and later turns")
        for t, turn in enumerate(later):
            where = f"am3_later_turns[{t}]"
            user = turn.get("user") if isinstance(turn, dict) else None
            if not isinstance(user, str) or not user.strip():
                raise RowError(f"{where}.user", "missing or empty")
            turn_images = _image_list(turn.get("images"), f"{where}.images")
            if user.count(IMAGE_PLACEHOLDER) != len(turn_images):
                raise RowError(f"{where}.images", f"{user.count(IMAGE_PLACEHOLDER)} placeholder(s) but {len(turn_images)} image(s)")
            turns.append([user, turn_images, turn.get("assistant")])
    result = []
    for k, (text, turn_images, reference) in enumerate(turns):
        if not text.strip():
            raise RowError(f"turn {k} user text", "empty")
        result.append(EvalTurn(text, tuple(turn_images), reference))
    return result, system, has_history


def item_from_row(row: dict[str, Any], origin: str) -> EvalItem:
    """Build one :class:`EvalItem` from a parquet row; raises :class:`RowError` naming the field."""
    data_source = row.get("data_source")
    if not isinstance(data_source, str) or not data_source:
        raise RowError("data_source", "missing")
    raw_id = row.get("id", _info(row).get("id"))
    if raw_id is None or str(raw_id).strip() == "":
        raise RowError("id", "missing (neither an 'id' column nor extra_info.id)")
    adapter = ADAPTERS.get(data_source, _GENERIC)
    category = adapter.category(row)
    harmful = adapter.harmful(row, category)
    turns, system, has_history = _turns_from_row(row)
    meta = {}
    for key in ("scenario", "source_question"):
        if isinstance(row.get(key), str):
            meta[key] = row[key]
    return EvalItem(
        uid=f"{data_source}/{raw_id}/r{len(turns)}",
        id=str(raw_id),
        data_source=data_source,
        category=category,
        harmful=harmful,
        turns=turns,
        system=system,
        has_history=has_history or adapter.prefilled,
        origin=origin,
        meta=meta,
    )


def _rows(path: Path) -> Iterator[dict[str, Any]]:
    parquet = pq.ParquetFile(path)
    for batch in parquet.iter_batches(batch_size=256):
        yield from batch.to_pylist()


@dataclass
class LoadedItems:
    """The items of every input file, in order, and the rejected rows."""

    items: list[EvalItem]
    rejects: list[UnevaluableRow]
    read: int

    def check_counts(self) -> None:
        """read == items + rejects (every row is accounted for)."""
        if self.read != len(self.items) + len(self.rejects):
            raise AssertionError(f"read {self.read} rows but kept {len(self.items)} and rejected {len(self.rejects)}")


def load_items(paths: list[str | Path], limit: int | None = None) -> LoadedItems:
    """Read every row of every parquet file (up to ``limit`` rows in all); bad rows become rejects.

    Raises ``FileNotFoundError`` / ``ValueError`` for a missing or unreadable file.
    """
    items: list[EvalItem] = []
    rejects: list[UnevaluableRow] = []
    uids: dict[str, str] = {}
    read = 0
    for raw_path in paths:
        path = Path(raw_path)
        if not path.is_file():
            raise FileNotFoundError(f"evaluation data {path} does not exist")
        try:
            rows = _rows(path)
            for position, row in enumerate(rows):
                if limit is not None and read >= limit:
                    break
                read += 1
                ident = row.get("id", _info(row).get("id"))
                try:
                    item = item_from_row(row, f"{path}:{position}")
                except RowError as exc:
                    rejects.append(UnevaluableRow(str(path), position, None if ident is None else str(ident), exc.field, str(exc)))
                    continue
                if item.uid in uids:
                    rejects.append(UnevaluableRow(str(path), position, item.id, "id", f"duplicate: {item.uid} is already {uids[item.uid]}"))
                    continue
                uids[item.uid] = item.origin
                items.append(item)
        except (OSError, ValueError) as exc:
            if isinstance(exc, RowError):
                raise
            raise ValueError(f"cannot read {path} as parquet: {exc}") from exc
    loaded = LoadedItems(items, rejects, read)
    loaded.check_counts()
    return loaded


def write_rejects(path: Path, rejects: list[UnevaluableRow]) -> None:
    """Write ``rejects.jsonl`` (always written, empty when nothing was rejected)."""
    with path.open("w", encoding="utf-8") as fh:
        for reject in rejects:
            fh.write(json.dumps(reject.as_dict(), ensure_ascii=False) + "\n")
