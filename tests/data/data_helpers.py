"""Small image and record makers shared by the data-preparation tests."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from PIL import Image


def png_bytes(size: tuple[int, int] = (64, 48), color: tuple[int, int, int] = (200, 40, 40)) -> bytes:
    """A small solid-colour PNG."""
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def write_jsonl(path: Path, records: list[Any]) -> Path:
    """Write ``records`` one JSON value a line (strings are written as raw lines)."""
    with open(path, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write((record if isinstance(record, str) else json.dumps(record)) + "\n")
    return path


def read_rejects(path: Path) -> list[dict[str, Any]]:
    """The rows of a rejects.jsonl file."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@dataclass(frozen=True)
class ConverterCase:
    """One of the three converters, as the tests that run the same bad input through each of them see it.

    ``record`` makes a valid input record with one image; the ``*_field`` attributes are the reject
    fields of its image, of a text field (``text`` goes there), and of a top-level key ``dup_key``.
    """

    name: str
    output: str
    """The parquet file a valid record is written to."""
    image_field: str
    text_field: str
    dup_key: str
    make: Callable[[str, Any, str], dict[str, Any]]
    input_flag: str
    extra_args: tuple[str, ...]
    main: Callable[[list[str]], Any]
    counts: Callable[[Any], Any]

    def record(self, record_id: str, image: Any = "img.png", text: str = "What is in the picture?") -> dict[str, Any]:
        """A valid record (given a valid ``image``)."""
        return self.make(record_id, image, text)

    def argv(self, source: Path, out: Path, *extra: str) -> list[str]:
        """The command line converting ``source`` into ``out`` (one worker, no progress bar)."""
        return [self.input_flag, str(source), "--output_dir", str(out), "--workers", "1", "--no_progress", *self.extra_args, *extra]

    def run(self, source: Path, out: Path, *extra: str) -> Any:
        """Run the converter's ``main``; returns its run counts (``RunCounts``)."""
        return self.counts(self.main(self.argv(source, out, *extra)))


def _intersafe(record_id: str, image: Any, text: str) -> dict[str, Any]:
    return {"id": record_id, "category": "violence", "turns": [{"user": f"<image> {text}", "images": [image]}]}


def _safemt(record_id: str, image: Any, text: str) -> dict[str, Any]:
    return {"id": record_id, "scenario": "fraud", "image_path": image, "dialogue": [{"role": "user", "content": "Look."}], "question": text}


def _refusal(record_id: str, image: Any, text: str) -> dict[str, Any]:
    return {"id": record_id, "image": image, "question": text, "answer": "I cannot help with that.", "domain": "general"}


def converter_cases() -> list[ConverterCase]:
    """The InterSafe-V, SafeMT and cold-start converters."""
    from am3_verl.data import cold_start, intersafe_v, safemt

    common = {"input_flag": "--input", "extra_args": (), "counts": lambda summary: summary.counts}
    return [
        ConverterCase(
            name="intersafe_v",
            output="rl_train.parquet",
            image_field="turns[0].images[0]",
            text_field="turns[0].user",
            dup_key="category",
            make=_intersafe,
            main=intersafe_v.main,
            **{**common, "extra_args": ("--val_size", "0")},
        ),
        ConverterCase(
            name="safemt",
            output="safemt.parquet",
            image_field="image_path",
            text_field="question",
            dup_key="scenario",
            make=_safemt,
            main=safemt.main,
            **common,
        ),
        ConverterCase(
            name="cold_start",
            output="cold_start.parquet",
            image_field="image",
            text_field="question",
            dup_key="domain",
            make=_refusal,
            main=cold_start.main,
            **{**common, "input_flag": "--refusal", "counts": lambda summary: summary.refusal},
        ),
    ]


CONVERTERS = {case.name: case for case in converter_cases()}
