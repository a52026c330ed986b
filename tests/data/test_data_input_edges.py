"""Input edge cases: non-object array elements become reject rows, a UTF-8 BOM is accepted, rejects are
deterministic, and unusable output folders give ``error: ...`` instead of a traceback."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from am3_verl.data.validate import Reject

REPO = Path(__file__).resolve().parents[2]
GOOD = {"id": "a", "category": "violence", "turns": [{"user": "hi", "images": []}]}


def _convert(tmp_path, name, text, *extra):
    source = tmp_path / name
    source.write_bytes(text if isinstance(text, bytes) else text.encode())
    out = tmp_path / f"out-{name}"
    result = subprocess.run([sys.executable, str(REPO / "data_prep/intersafe_v.py"), "--input", str(source), "--output_dir",
                             str(out), "--val_size", "0", "--no_progress", *extra], capture_output=True, text=True)  # fmt: skip
    return result, out


def test_non_objects_in_a_json_array_are_reject_rows(tmp_path):
    result, out = _convert(tmp_path, "arr.json", json.dumps([7, None, GOOD]))
    assert result.returncode == 0, result.stderr
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert [(r["position"], r["field"]) for r in rejects] == [(0, "<record>"), (1, "<record>")]
    assert "found int" in rejects[0]["reason"] and "found null" in rejects[1]["reason"]


@pytest.mark.slow  # runs the command-line script
@pytest.mark.parametrize("name", ["bom.jsonl", "bom.json"])
def test_a_utf8_bom_is_accepted(tmp_path, name):
    text = json.dumps(GOOD) + "\n" if name.endswith("jsonl") else json.dumps([GOOD])
    result, out = _convert(tmp_path, name, b"\xef\xbb\xbf" + text.encode())
    assert result.returncode == 0, result.stderr
    assert (out / "rejects.jsonl").read_text() == ""


def test_reject_rows_carry_no_object_addresses():
    reject = Reject(3, "x", "turns[0].images[0]", "bad value <PIL.Image.Image object at 0x7f3a2c1b5e90>")
    assert json.loads(reject.to_json())["reason"] == "bad value <PIL.Image.Image object>"


@pytest.mark.slow  # runs the command-line script
@pytest.mark.parametrize("where", ["a_file", "a_file/sub"])
def test_an_unusable_output_folder_is_a_clear_error(tmp_path, where):
    (tmp_path / "a_file").write_text("not a folder")
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps(GOOD) + "\n")
    result = subprocess.run([sys.executable, str(REPO / "data_prep/intersafe_v.py"), "--input", str(source), "--output_dir",
                             str(tmp_path / where), "--no_progress"], capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 1 and result.stderr.startswith("error: --output_dir") and "Traceback" not in result.stderr
