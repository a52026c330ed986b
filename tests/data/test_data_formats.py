"""The same dialogues given as JSONL, parquet (``datasets.Image`` structs) or a saved ``datasets`` folder
convert to the same rows; image entries as paths, data: URIs or bytes; resizing to a max-pixels bound."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import datasets
import pyarrow.parquet as pq
from PIL import Image

from am3_verl.data.cold_start import convert_cold_start
from am3_verl.data.images import ImagePolicy, shrunk_size
from am3_verl.data.intersafe_v import convert_intersafe_v

from data_helpers import png_bytes, write_jsonl

_FEATURES = datasets.Features(
    {
        "id": datasets.Value("string"),
        "category": datasets.Value("string"),
        "source": datasets.Value("string"),
        "turns": datasets.List(
            {"user": datasets.Value("string"), "images": datasets.List(datasets.Image()), "assistant": datasets.Value("string")}
        ),
    }
)


def _rows(path: Path) -> list[dict]:
    rows = pq.read_table(path).to_pylist()
    for row in rows:
        row.pop("am3_meta")  # meta is absent from the table forms
    return rows


def _as_hf_records(sample: Path, embed: bool) -> list[dict]:
    records = []
    for line in (sample / "intersafe_v.jsonl").read_text().splitlines():
        record = json.loads(line)
        record.pop("meta")
        for turn in record["turns"]:
            turn.setdefault("assistant", None)
            turn["images"] = [
                {"bytes": (sample / p).read_bytes(), "path": None} if embed else {"bytes": None, "path": p} for p in turn["images"]
            ]
        records.append(record)
    return records


def test_jsonl_parquet_and_datasets_folder_give_the_same_rows(tmp_path, sample_copy, monkeypatch):
    convert_intersafe_v(sample_copy / "intersafe_v.jsonl", tmp_path / "jsonl", val_size=4, workers=1, progress=False)
    expected = {split: _rows(tmp_path / "jsonl" / f"rl_{split}.parquet") for split in ("train", "val")}

    embedded = datasets.Dataset.from_list(_as_hf_records(sample_copy, embed=True), features=_FEATURES)
    embedded.to_parquet(str(tmp_path / "dialogues.parquet"))
    embedded.save_to_disk(str(tmp_path / "dialogues_ds"))
    by_path = datasets.Dataset.from_list(_as_hf_records(sample_copy, embed=False), features=_FEATURES)
    with monkeypatch.context() as m:
        m.chdir(sample_copy)  # `datasets` sizes path-only images relative to the working folder
        by_path.to_parquet(str(sample_copy / "by_path.parquet"))  # we resolve them against the file's folder

    for name, source in (
        ("parquet", tmp_path / "dialogues.parquet"),
        ("datasets", tmp_path / "dialogues_ds"),
        ("by_path", sample_copy / "by_path.parquet"),
    ):
        summary = convert_intersafe_v(source, tmp_path / name, val_size=4, workers=1, progress=False)
        assert summary.counts.rejected == 0, name
        for split in ("train", "val"):
            assert _rows(tmp_path / name / f"rl_{split}.parquet") == expected[split], (name, split)


def test_data_uris_absolute_paths_and_json_arrays(tmp_path):
    image = png_bytes((60, 40))
    (tmp_path / "abs.png").write_bytes(image)
    uri = "data:image/png;base64," + base64.b64encode(image).decode()
    record = {"id": "x", "category": "benign", "turns": [{"user": "<image><image>", "images": [uri, str(tmp_path / "abs.png")]}]}
    (tmp_path / "in.json").write_text(json.dumps([record]))
    convert_intersafe_v(tmp_path / "in.json", tmp_path / "out", val_size=0, workers=1, progress=False)
    row = pq.read_table(tmp_path / "out" / "rl_train.parquet").to_pylist()[0]
    assert [i["bytes"] for i in row["images"]] == [image, image]
    assert row["am3_later_turns"] == [] and row["extra_info"]["reference_first_reply"] is None


def test_images_are_shrunk_to_the_max_pixels_bound(tmp_path, sample_copy):
    summary = convert_intersafe_v(
        sample_copy / "intersafe_v.jsonl", tmp_path / "rl", val_size=0, workers=1, policy=ImagePolicy(max_pixels=64 * 64), progress=False
    )
    assert 0 < summary.counts.resized <= summary.counts.images == 36
    rows = pq.read_table(tmp_path / "rl" / "rl_train.parquet").to_pylist()
    sizes = []
    for row in rows:
        for img in row["images"] + [i for t in row["am3_later_turns"] for i in t["images"]]:
            with Image.open(io.BytesIO(img["bytes"])) as decoded:
                sizes.append(decoded.size)
                assert decoded.width * decoded.height <= 64 * 64
    assert len(sizes) == 36

    jpeg = io.BytesIO()
    Image.new("RGB", (300, 200), (10, 120, 30)).save(jpeg, format="JPEG")
    (tmp_path / "photo.jpg").write_bytes(jpeg.getvalue())
    write_jsonl(
        tmp_path / "refusal.jsonl",
        [
            {"id": "r", "image": "photo.jpg", "question": "q?", "answer": "I'm sorry.", "domain": "health"},
        ],
    )
    convert_cold_start(tmp_path / "refusal.jsonl", tmp_path / "cs", policy=ImagePolicy(max_pixels=100 * 100), workers=1, progress=False)
    stored = pq.read_table(tmp_path / "cs" / "cold_start.parquet").to_pylist()[0]["images"][0]["bytes"]
    with Image.open(io.BytesIO(stored)) as decoded:
        assert decoded.format == "JPEG" and decoded.size == shrunk_size(300, 200, 100 * 100, 28) == (122, 81)


def test_general_mix_takes_the_ratio_and_stops_reading(tmp_path, sample_copy):
    summary = convert_cold_start(
        sample_copy / "refusal_vqa.jsonl",
        tmp_path / "cs",
        general_path=sample_copy / "general.jsonl",
        general_ratio=0.25,
        workers=2,
        chunk_size=2,
        progress=False,
    )
    assert summary.general is not None and summary.general_wanted == 3
    assert (summary.general.read, summary.general.written["general"], summary.general.rejected) == (3, 3, 0)
    rows = pq.read_table(tmp_path / "cs" / "cold_start.parquet").column("extra_info").to_pylist()
    assert [r["id"] for r in rows if r["kind"] == "general"] == ["sample-gen-001", "sample-gen-002", "sample-gen-003"]
