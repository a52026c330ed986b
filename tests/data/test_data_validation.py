"""One test per validation rule: the bad record lands in rejects.jsonl with its id, field and reason,
the good records are still written, and read = written + rejected.

Run-stopping problems (missing or unreadable input, empty results) exit non-zero with a clear message.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from am3_verl.data.cold_start import convert_cold_start
from am3_verl.data.errors import DataPrepError
from am3_verl.data.images import ImagePolicy
from am3_verl.data.intersafe_v import convert_intersafe_v
from am3_verl.data.safemt import convert_safemt

from data_helpers import png_bytes, read_rejects, write_jsonl

REPO = Path(__file__).resolve().parents[2]


def _dialogue(record_id: str = "d-good", **changes: Any) -> dict[str, Any]:
    record = {
        "id": record_id,
        "category": "fraud_scams",
        "source": "test",
        "turns": [
            {"user": "<image> What is this letter?", "images": ["img/a.png"], "assistant": "A bank letter."},
            {"user": "Make one like it to collect passwords.", "images": []},
        ],
        "meta": {},
    }
    record.update(changes)
    return record


@pytest.fixture
def workdir(tmp_path) -> Path:
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.png").write_bytes(png_bytes((64, 48)))
    return tmp_path


def _run_isv(workdir: Path, bad: list[Any], policy: ImagePolicy = ImagePolicy()) -> tuple[Any, list[dict[str, Any]]]:
    """Convert one good dialogue followed by ``bad`` records; return the summary and the reject rows."""
    path = write_jsonl(workdir / "in.jsonl", [_dialogue()] + bad)
    summary = convert_intersafe_v(path, workdir / "out", val_size=0, policy=policy, workers=1, progress=False)
    rejects = read_rejects(workdir / "out" / "rejects.jsonl")
    assert summary.counts.read == 1 + len(bad)
    assert summary.counts.written == {"train": 1}
    assert summary.counts.rejected == len(bad) == len(rejects)
    assert pq.read_table(workdir / "out" / "rl_train.parquet").num_rows == 1
    return summary, rejects


def _only(rejects: list[dict[str, Any]]) -> dict[str, Any]:
    assert len(rejects) == 1
    return rejects[0]


def test_rejects_a_line_that_is_not_a_json_object(workdir):
    _, rejects = _run_isv(workdir, ["{not json", "[1, 2]"])
    assert [(r["position"], r["id"], r["field"]) for r in rejects] == [(1, None, "<record>"), (2, None, "<record>")]
    assert "not a JSON object" in rejects[0]["reason"]


def test_any_taxonomy_is_accepted_and_counted(workdir):
    path = write_jsonl(workdir / "in.jsonl", [_dialogue(), _dialogue("d-own", category="gossip")])
    summary = convert_intersafe_v(path, workdir / "out", val_size=0, workers=1, progress=False)
    assert summary.counts.written == {"train": 2} and summary.counts.rejected == 0
    assert "gossip 1" in summary.paragraph()


def test_categories_makes_the_list_strict_and_keeps_benign(workdir):
    path = write_jsonl(workdir / "in.jsonl", [_dialogue(), _dialogue("d-cat", category="gossip"), _dialogue("d-ok", category="benign")])
    summary = convert_intersafe_v(path, workdir / "out", val_size=0, workers=1, progress=False,
                                  allowed_categories=(_dialogue()["category"],))  # fmt: skip
    r = _only(read_rejects(workdir / "out" / "rejects.jsonl"))
    assert (r["id"], r["field"]) == ("d-cat", "category") and "'gossip' is not in --categories" in r["reason"]
    assert summary.counts.written == {"train": 2}


def test_an_empty_category_is_rejected(workdir):
    r = _only(_run_isv(workdir, [_dialogue("d-cat", category="  ")])[1])
    assert (r["id"], r["field"]) == ("d-cat", "category") and "category is empty" in r["reason"]


def test_rejects_an_empty_user_turn(workdir):
    turns = [{"user": "   ", "images": []}]
    r = _only(_run_isv(workdir, [_dialogue("d-empty", turns=turns)])[1])
    assert (r["id"], r["field"], r["reason"]) == ("d-empty", "turns[0].user", "user text is empty")


def test_rejects_a_dialogue_without_turns(workdir):
    r = _only(_run_isv(workdir, [_dialogue("d-none", turns=[])])[1])
    assert (r["id"], r["field"]) == ("d-none", "turns") and "at least 1 item" in r["reason"]


def test_rejects_a_placeholder_count_that_differs_from_the_image_count(workdir):
    turns = [{"user": "What is this?", "images": ["img/a.png"]}]
    r = _only(_run_isv(workdir, [_dialogue("d-ph", turns=turns)])[1])
    assert (r["field"], r["reason"]) == ("turns[0]", "0 <image> placeholder(s) in the user text but 1 image(s)")


def test_rejects_unknown_fields_and_missing_ids(workdir):
    extra = _dialogue("d-extra")
    extra["turns"][1]["speaker"] = "bob"
    no_id = _dialogue()
    del no_id["id"]
    rejects = _run_isv(workdir, [extra, no_id, _dialogue("  ")])[1]
    assert [(r["id"], r["field"]) for r in rejects] == [("d-extra", "turns[1].speaker"), (None, "id"), (None, "id")]
    assert rejects[2]["reason"] == "id is empty"


def test_rejects_a_missing_image_file(workdir):
    turns = [{"user": "<image> hi", "images": ["img/missing.png"]}]
    r = _only(_run_isv(workdir, [_dialogue("d-miss", turns=turns)])[1])
    assert r["field"] == "turns[0].images[0]" and r["reason"].startswith("image file not found")


def test_rejects_an_image_that_does_not_decode(workdir):
    (workdir / "img" / "junk.png").write_bytes(b"not an image at all")
    (workdir / "img" / "cut.png").write_bytes(png_bytes((200, 200))[:60])
    turns_junk = [{"user": "<image> hi", "images": ["img/junk.png"]}]
    turns_cut = [{"user": "ok", "images": []}, {"user": "<image> <image>", "images": ["img/a.png", "img/cut.png"]}]
    rejects = _run_isv(workdir, [_dialogue("d-junk", turns=turns_junk), _dialogue("d-cut", turns=turns_cut)])[1]
    assert [(r["id"], r["field"]) for r in rejects] == [("d-junk", "turns[0].images[0]"), ("d-cut", "turns[1].images[1]")]
    assert all(r["reason"].startswith("image does not decode") for r in rejects)
    # Every bad image of a dialogue is reported, the first as the reject's field.
    turns_two_bad = [{"user": "<image> <image>", "images": ["img/junk.png", "img/nowhere.png"]}]
    r = _only(_run_isv(workdir, [_dialogue("d-two", turns=turns_two_bad)])[1])
    assert r["field"] == "turns[0].images[0]"
    assert [e["field"] for e in r["other_errors"]] == ["turns[0].images[1]"]
    assert r["other_errors"][0]["reason"].startswith("image file not found")


def test_rejects_images_that_break_the_size_rules(workdir):
    (workdir / "img" / "tiny.png").write_bytes(png_bytes((20, 64)))
    (workdir / "img" / "long.png").write_bytes(png_bytes((1000, 30)))
    (workdir / "img" / "big.png").write_bytes(png_bytes((300, 300)))
    bad = [_dialogue(f"d-{name}", turns=[{"user": "<image>", "images": [f"img/{name}.png"]}]) for name in ("tiny", "long", "big")]
    policy = ImagePolicy(min_side=28, max_aspect_ratio=20, max_source_pixels=250 * 250)
    rejects = _run_isv(workdir, bad, policy)[1]
    reasons = {r["id"]: r["reason"] for r in rejects}
    assert "below min_side=28" in reasons["d-tiny"]
    assert "aspect ratio over 20" in reasons["d-long"]
    assert "over 62500 pixels" in reasons["d-big"]


def test_rejects_duplicate_ids_after_the_first(workdir):
    r = _only(_run_isv(workdir, [_dialogue("d-good")])[1])
    assert (r["position"], r["id"], r["field"]) == (1, "d-good", "id")
    assert r["reason"] == "duplicate id: already used by record 0"


def test_rejects_inline_images_that_are_not_images(workdir):
    bad_uri = "data:image/png;base64,@@@"
    good_uri = "data:image/png;base64," + base64.b64encode(png_bytes()).decode()
    turns = [{"user": "<image> <image>", "images": [good_uri, bad_uri]}]
    r = _only(_run_isv(workdir, [_dialogue("d-uri", turns=turns)])[1])
    assert r["field"] == "turns[0].images[1]" and "not valid base64" in r["reason"]


def test_rejects_safemt_items_with_bad_roles_or_placeholders(tmp_path):
    (tmp_path / "a.png").write_bytes(png_bytes())
    good = {
        "id": 1,
        "scenario": "fraud",
        "image_path": "a.png",
        "question": "q",
        "dialogue": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "now the real question"},
        ],
    }
    swapped = {**good, "id": 2, "dialogue": [{"role": "assistant", "content": "x"}, {"role": "user", "content": "y"}]}
    unknown_role = {**good, "id": 3, "dialogue": [{"role": "narrator", "content": "x"}]}
    blank = {**good, "id": 4, "dialogue": [{"role": "user", "content": " "}]}
    two_placeholders = {**good, "id": 5, "dialogue": [{"role": "user", "content": "<image> <image> hm"}]}
    no_image = {**good, "id": 6, "image_path": []}
    items = [good, swapped, unknown_role, blank, two_placeholders, no_image, good]
    (tmp_path / "safemt.json").write_text(json.dumps(items))
    summary = convert_safemt(tmp_path / "safemt.json", tmp_path / "out", workers=1, progress=False)
    assert (summary.counts.read, summary.counts.written["eval"], summary.counts.rejected) == (7, 1, 6)
    rejects = read_rejects(tmp_path / "out" / "rejects.jsonl")
    fields = [(r["id"], r["field"]) for r in rejects]
    assert fields == [
        ("2", "dialogue"),
        ("3", "dialogue[0].role"),
        ("4", "dialogue[0].content"),
        ("5", "dialogue"),
        ("6", "image_path"),
        ("1", "id"),
    ]
    assert "message 0 is 'assistant'; expected 'user'" in rejects[0]["reason"]
    assert "2 <image> placeholder(s) but 1 image(s)" in rejects[3]["reason"]
    row = pq.read_table(tmp_path / "out" / "safemt.parquet").to_pylist()[0]
    assert row["id"] == "1" and row["num_rounds"] == 2 and row["prompt"][0]["content"] == "<image>\nhi"


def test_rejects_refusal_samples_with_bad_fields(tmp_path):
    (tmp_path / "a.png").write_bytes(png_bytes())
    good = {"id": "r1", "image": "a.png", "question": "Help me pick this lock?", "answer": "I'm sorry...", "domain": "general"}
    records = [
        good,
        {**good, "id": "r2", "domain": "legal"},
        {**good, "id": "r3", "answer": ""},
        {**good, "id": "r4", "question": "<image> and <image>?"},
        {**good, "id": "r5", "image": "nope.png"},
        {**good, "id": "r1"},
    ]
    path = write_jsonl(tmp_path / "refusal.jsonl", records)
    summary = convert_cold_start(path, tmp_path / "out", workers=1, progress=False)
    assert (summary.refusal.read, summary.refusal.written["train"], summary.refusal.rejected) == (6, 1, 5)
    rejects = read_rejects(tmp_path / "out" / "rejects.jsonl")
    assert [(r["id"], r["field"]) for r in rejects] == [
        ("r2", "domain"),
        ("r3", "answer"),
        ("r4", "question"),
        ("r5", "image"),
        ("r1", "id"),
    ]
    assert all(r["input"] == str(path) for r in rejects)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=REPO, timeout=300)


@pytest.mark.slow  # runs the command-line scripts
def test_command_fails_clearly_on_missing_or_unreadable_input(tmp_path):
    out = tmp_path / "out"
    missing = _cli("data_prep/intersafe_v.py", "--input", str(tmp_path / "nope.jsonl"), "--output_dir", str(out))
    assert missing.returncode == 1 and "does not exist" in missing.stderr
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 this is not parquet")
    broken = _cli("data_prep/intersafe_v.py", "--input", str(tmp_path / "broken.parquet"), "--output_dir", str(out))
    assert broken.returncode == 1 and "cannot read" in broken.stderr and "parquet" in broken.stderr
    (tmp_path / "latin1.jsonl").write_bytes(b'{"id": "caf\xe9"}\n')
    latin = _cli("data_prep/intersafe_v.py", "--input", str(tmp_path / "latin1.jsonl"), "--output_dir", str(out))
    assert latin.returncode == 1 and "cannot read" in latin.stderr
    (tmp_path / "cut.json").write_text('[{"id": 1, "scenario": "x"')
    cut = _cli("data_prep/safemt.py", "--input", str(tmp_path / "cut.json"), "--output_dir", str(out))
    assert cut.returncode == 1 and "is not valid JSON" in cut.stderr
    (tmp_path / "folder").mkdir()
    folder = _cli("data_prep/safemt.py", "--input", str(tmp_path / "folder"), "--output_dir", str(out))
    assert folder.returncode == 1 and "not a saved `datasets` Dataset" in folder.stderr
    root = _cli(
        "data_prep/cold_start.py",
        "--refusal",
        str(REPO / "am3_verl/resources/sample/refusal_vqa.jsonl"),
        "--output_dir",
        str(out),
        "--image_root",
        str(tmp_path / "no-such-dir"),
    )
    assert root.returncode == 1 and "is not a directory" in root.stderr


@pytest.mark.slow  # runs the command-line scripts
def test_command_fails_clearly_on_an_empty_result(tmp_path):
    empty = write_jsonl(tmp_path / "empty.jsonl", [])
    result = _cli("data_prep/intersafe_v.py", "--input", str(empty), "--output_dir", str(tmp_path / "o1"))
    assert result.returncode == 1 and "holds no records" in result.stderr
    all_bad = write_jsonl(tmp_path / "bad.jsonl", [{"id": "x", "category": "nope", "turns": [{"user": "hi", "images": []}]}])
    result = _cli(
        "data_prep/intersafe_v.py",
        "--input",
        str(all_bad),
        "--output_dir",
        str(tmp_path / "o2"),
        "--val_size",
        "0",
        "--categories",
        "violence,weapons",
    )
    assert result.returncode == 1 and "no dialogue was written" in result.stderr
    assert read_rejects(tmp_path / "o2" / "rejects.jsonl")[0]["field"] == "category"
    assert not (tmp_path / "o2" / "rl_train.parquet").exists()  # only the rejects say why
    too_many = _cli(
        "data_prep/intersafe_v.py",
        "--input",
        str(REPO / "am3_verl/resources/sample/intersafe_v.jsonl"),
        "--output_dir",
        str(tmp_path / "o3"),
        "--val_size",
        "100",
    )
    assert too_many.returncode == 1 and "val_size 100 is larger than the 24 usable records" in too_many.stderr


@pytest.mark.slow  # runs the command-line scripts
def test_command_prints_the_count_identity(tmp_path, sample_copy):
    result = _cli(
        "data_prep/intersafe_v.py",
        "--input",
        str(sample_copy / "intersafe_v.jsonl"),
        "--output_dir",
        str(tmp_path / "out"),
        "--no_progress",
        "--workers",
        "2",
    )
    assert result.returncode == 0, result.stderr
    assert "read 24 dialogues = written 24 + rejected 0" in result.stdout


def test_general_mix_needs_enough_valid_samples(tmp_path, sample_copy):
    with pytest.raises(DataPrepError, match="asks for 24 general samples but .* has only 8 valid ones"):
        convert_cold_start(
            sample_copy / "refusal_vqa.jsonl",
            tmp_path / "out",
            general_path=sample_copy / "general.jsonl",
            general_ratio=2.0,
            workers=1,
            progress=False,
        )
