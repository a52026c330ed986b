"""Outputs are byte-for-byte identical for the same input and seed, whatever the number of workers;
the split is stratified, exact in size and a function of (seed, id) only."""

from __future__ import annotations

import io
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from am3_verl.data.cold_start import convert_cold_start
from am3_verl.data.conversion import LOCK_FILE
from am3_verl.data.intersafe_v import convert_intersafe_v
from am3_verl.data.safemt import convert_safemt
from am3_verl.data.splits import resolve_val_count, stratified_val_positions

from data_helpers import write_jsonl


def _bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.name != LOCK_FILE}  # the lock file stays by design


def test_outputs_are_byte_identical_across_runs_and_worker_counts(tmp_path, sample_copy):
    runs = {}
    for name, workers in (("a", 1), ("b", 2), ("c", 2)):
        out = tmp_path / name
        convert_intersafe_v(
            sample_copy / "intersafe_v.jsonl",
            out / "rl",
            val_size=5,
            seed=7,
            workers=workers,
            chunk_size=4,
            row_group_rows=8,
            progress=False,
        )
        convert_cold_start(
            sample_copy / "refusal_vqa.jsonl",
            out / "cs",
            general_path=sample_copy / "general.jsonl",
            general_ratio=0.5,
            val_size=3,
            workers=workers,
            chunk_size=4,
            progress=False,
        )
        convert_safemt(sample_copy / "safemt.json", out / "safemt", workers=workers, chunk_size=4, progress=False)
        runs[name] = {sub: _bytes(out / sub) for sub in ("rl", "cs", "safemt")}
    assert runs["a"] == runs["b"] == runs["c"]
    assert set(runs["a"]["rl"]) == {"rl_train.parquet", "rl_val.parquet", "rejects.jsonl", "README.md"}
    assert pq.ParquetFile(tmp_path / "a" / "rl" / "rl_train.parquet").metadata.num_row_groups == 3  # 19 rows / 8


def test_seed_changes_the_split_and_the_split_is_stratified(tmp_path, sample_copy):
    val_ids = {}
    for seed in (1, 2):
        convert_intersafe_v(sample_copy / "intersafe_v.jsonl", tmp_path / str(seed), val_size=6, seed=seed, workers=1, progress=False)
        rows = pq.read_table(tmp_path / str(seed) / "rl_val.parquet").column("extra_info").to_pylist()
        val_ids[seed] = {r["id"] for r in rows}
        assert len(rows) == 6 and all(r["split"] == "val" for r in rows)
        # 13 strata, 6 validation rows: the benign stratum (5 of 24) gets its proportional share, 1.25 -> 1.
        assert Counter(r["category"] for r in rows)["benign"] == 1
    assert val_ids[1] != val_ids[2]


def test_stratified_val_positions_is_exact_proportional_and_order_free():
    keys = [(i, f"id-{i}", "a") for i in range(50)] + [(50 + i, f"id-{50 + i}", "b") for i in range(30)]
    keys += [(80 + i, f"id-{80 + i}", "c") for i in range(20)]
    chosen = stratified_val_positions(keys, 10, seed=3)
    assert len(chosen) == 10
    assert Counter(keys[p][2] for p in chosen) == {"a": 5, "b": 3, "c": 2}
    shuffled = keys[:]
    random.Random(0).shuffle(shuffled)
    assert stratified_val_positions(shuffled, 10, seed=3) == chosen
    assert stratified_val_positions(keys, 10, seed=4) != chosen
    # Largest remainder: 7 of (50, 30, 20) -> quotas 3.5 / 2.1 / 1.4 -> 3 + 2 + 1, the extra one to 'a'.
    assert Counter(keys[p][2] for p in stratified_val_positions(keys, 7, seed=3)) == {"a": 4, "b": 2, "c": 1}
    assert resolve_val_count(100, None, 0.05) == 5 and resolve_val_count(100, 7, None) == 7


def test_file_layout_does_not_depend_on_chunk_size_or_workers(tmp_path):
    # Incompressible images of ~100 KB, so parquet pages (1 MB) fill up and split inside row groups.
    rng = np.random.default_rng(0)
    (tmp_path / "img").mkdir()
    records = []
    for i in range(40):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, size=(180, 180, 3), dtype=np.uint8)).save(buffer, format="PNG")
        (tmp_path / "img" / f"{i}.png").write_bytes(buffer.getvalue())
        records.append({"id": f"n{i}", "category": "benign", "turns": [{"user": "<image> hi", "images": [f"img/{i}.png"]}]})
    write_jsonl(tmp_path / "in.jsonl", records)
    outputs = []
    for chunk_size, workers in ((3, 1), (32, 2), (7, 2)):
        out = tmp_path / f"out-{chunk_size}-{workers}"
        convert_intersafe_v(
            tmp_path / "in.jsonl", out, val_size=4, workers=workers, chunk_size=chunk_size, row_group_rows=16, progress=False
        )
        outputs.append(_bytes(out))
    assert outputs[0] == outputs[1] == outputs[2]
