"""Dataset cards: the ``README.md`` that data preparation and the InterSafe-V builder write next to their outputs.

A card is a Hugging Face dataset card: YAML front matter (``license``, ``task_categories``,
``size_categories``, ``tags``, ``pretty_name`` and ``configs`` with their ``data_files``, so
``datasets.load_dataset(folder)`` loads the right files and splits, never the rejects or logs) and a
Markdown body with a content warning, the files, the category distribution and the construction
settings. The license is ``other``: the data inherits the licences of its sources (the card says so
and lists the sources in its settings); whoever publishes a folder states the licence there.

:func:`render_card` builds the text; the callers write it with the rest of their outputs (staged and
renamed with them, or with :func:`am3_verl.atomic.write_text_atomic`).

Every card carries :data:`CARD_MARKER` (an HTML comment line right after the front matter, invisible when
rendered). A folder's ``README.md`` is replaced only when it carries that line (:func:`check_replaceable`):
a README someone else wrote is never overwritten.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import pyarrow.parquet as pq
import yaml

CARD_FILE = "README.md"
CARD_MARKER = "<!-- am3-verl dataset card: written by an am3-verl data command, replaced when it runs again -->"
"""The line that marks a README as a card the data commands wrote (and may therefore replace)."""
_MARKER_SCAN_BYTES = 1 << 20
CONTENT_WARNING = (
    "**Content warning.** This dataset contains requests for harmful content (violence, weapons, drugs, "
    "self-harm, hate, fraud and other harm categories), including requests split over several turns and "
    "images, and may contain model replies that comply with them. It exists for safety research: "
    "training and evaluating models to refuse such requests. Do not use it to produce harmful content."
)
LICENSE_NOTE = (
    "License: `other` - the records are derived from their source datasets and inherit their licences "
    "(see *Construction settings* for the sources); state the licence here before publishing this folder."
)
_SIZE_BUCKETS = (
    (1_000, "n<1K"),
    (10_000, "1K<n<10K"),
    (100_000, "10K<n<100K"),
    (1_000_000, "100K<n<1M"),
    (10_000_000, "1M<n<10M"),
    (100_000_000, "10M<n<100M"),
)


def size_category(n: int) -> str:
    """The Hugging Face ``size_categories`` bucket of ``n`` records."""
    for bound, name in _SIZE_BUCKETS:
        if n < bound:
            return name
    return "n>100M"


@dataclass
class CardConfig:
    """One ``configs`` entry: a name and its splits (split -> file name in the folder)."""

    name: str
    splits: dict[str, str]
    default: bool = False


@dataclass
class DatasetCard:
    """Everything a card states."""

    pretty_name: str
    summary: str
    configs: list[CardConfig]
    n_records: int
    task_categories: list[str]
    distributions: dict[str, dict[str, int]] = field(default_factory=dict)
    """Table title -> value -> count (e.g. "category (train)" -> {"violence": 12})."""
    settings: dict[str, Any] = field(default_factory=dict)
    """How the data was made: command, inputs, options (no secrets)."""
    files: dict[str, str] = field(default_factory=dict)
    """Other files in the folder -> what they hold (rejects, logs); not part of any config."""
    tags: list[str] = field(default_factory=lambda: ["safety", "multimodal", "multi-turn", "red-teaming", "am3-verl"])


def front_matter(card: DatasetCard) -> dict[str, Any]:
    """The YAML metadata of ``card`` (Hugging Face dataset-card fields)."""
    configs = []
    for config in card.configs:
        entry: dict[str, Any] = {
            "config_name": config.name,
            "data_files": [{"split": split, "path": path} for split, path in config.splits.items()],
        }
        if config.default:
            entry["default"] = True
        configs.append(entry)
    return {
        "pretty_name": card.pretty_name,
        "license": "other",
        "license_name": "inherits-source-licences",
        "language": ["en"],
        "task_categories": card.task_categories,
        "size_categories": [size_category(card.n_records)],
        "tags": card.tags,
        "configs": configs,
    }


def _table(title: str, counts: dict[str, int]) -> str:
    total = sum(counts.values())
    rows = [f"| {title} | count | share |", "|---|---:|---:|"]
    for value, n in sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0]))):
        rows.append(f"| {value} | {n} | {n / total:.1%} |" if total else f"| {value} | {n} | - |")
    rows.append(f"| **total** | {total} | |")
    return "\n".join(rows)


def render_card(card: DatasetCard) -> str:
    """The card's ``README.md`` text: YAML front matter, then the Markdown body."""
    meta = yaml.safe_dump(front_matter(card), sort_keys=False, allow_unicode=True, width=1000)
    body = [f"# {card.pretty_name}", "", CONTENT_WARNING, "", card.summary, "", LICENSE_NOTE, "", "## Files", ""]
    for config in card.configs:
        splits = ", ".join(f"`{path}` ({split})" for split, path in config.splits.items())
        body.append(f"- config `{config.name}`{' (default)' if config.default else ''}: {splits}")
    for name, what in card.files.items():
        body.append(f"- `{name}`: {what} (not part of any config)")
    body += [
        "",
        f'{card.n_records} records in all. Load with `datasets.load_dataset("<this folder>")`'
        + (f" or name a config: {', '.join(repr(c.name) for c in card.configs)}." if len(card.configs) > 1 else "."),
    ]
    if card.distributions:
        body += ["", "## Distribution", ""]
        for title, counts in card.distributions.items():
            body += [_table(title, counts), ""]
    if card.settings:
        settings = yaml.safe_dump(card.settings, sort_keys=False, allow_unicode=True, width=1000).rstrip()
        body += ["## Construction settings", "", "```yaml", settings, "```", ""]
    return f"---\n{meta}---\n{CARD_MARKER}\n\n" + "\n".join(body).rstrip() + "\n"


class CardConflict(ValueError):
    """The folder holds a ``README.md`` that is not a card the data commands wrote."""


def check_replaceable(path: str | Path) -> None:
    """Return if ``path`` is absent or a card carrying :data:`CARD_MARKER`; else raise :class:`CardConflict` naming it.

    Only the first MiB is read (a card is a few KiB): a README whose marker line is not there was not
    written by :func:`render_card`.
    """
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            head = handle.read(_MARKER_SCAN_BYTES)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise CardConflict(f"{path} exists but cannot be read ({exc.strerror or exc}), so it is not replaced") from None
    if CARD_MARKER.encode("utf-8") not in head.splitlines():
        raise CardConflict(
            f"{path} was not written by an am3-verl data command (it lacks the line {CARD_MARKER!r}) and is not "
            "replaced: move it away or pass another --output_dir"
        )


def column_counts(paths: Iterable[str | Path], column: str) -> dict[str, int]:
    """Counts of the values of ``column`` (``a.b`` for a struct field) over parquet files, read column-wise."""
    top, _, sub = column.partition(".")
    counts: Counter = Counter()
    for path in paths:
        values = pq.read_table(path, columns=[top]).column(top).to_pylist()
        for value in values:
            value = value.get(sub) if sub and isinstance(value, dict) else value
            counts[str(value)] += 1
    return dict(counts)
