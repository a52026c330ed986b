"""Image paths read by evaluation: only regular files up to the cap are read. In ``eval general`` a FIFO,
/dev/zero, an oversized file or a folder rejects its record (file, line, id, field, reason) at once, without
hanging or reading it, and no reason quotes a file's bytes; in a results folder (``eval report``/``compare``)
such an image reference is a clear error."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
from PIL import Image

from am3_verl.eval.cli import main
from am3_verl.eval.general import load_task
from am3_verl.eval.results import image_data_url_of, load_image
from am3_verl.testing.openai_server import LoopbackOpenAIServer
from hostile_files import EXPECTED_REASON, bounded_call, hostile_paths


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), "blue").save(buffer, format="PNG")
    return buffer.getvalue()


def _record(record_id: str, image) -> dict:
    return {"id": record_id, "image": image, "question": "What colour is this?", "answer": "Blue.", "short_answers": ["blue"]}


@pytest.fixture
def task(tmp_path) -> tuple[Path, dict[str, Path]]:
    """A task file: one good item, one per hostile path, one text file posing as an image, one list entry."""
    hostile = hostile_paths(tmp_path / "hostile")
    (tmp_path / "good.png").write_bytes(_png())
    (tmp_path / "notes.png").write_bytes(b"SECRET-KEY=sk-123456 and more text")
    records = [_record("good", "good.png")]
    records += [_record(f"bad-{kind}", str(path)) for kind, path in sorted(hostile.items())]
    records += [_record("secret", "notes.png"), _record("list", ["good.png", str(hostile["fifo"])])]
    path = tmp_path / "hostile_task.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path, hostile


def _check_rejects(rejects: list[dict], task_file: Path) -> None:
    by_id = {r["id"]: r for r in rejects}
    assert sorted(by_id) == sorted([f"bad-{k}" for k in EXPECTED_REASON] + ["secret", "list"])
    for kind, pattern in EXPECTED_REASON.items():
        reject = by_id[f"bad-{kind}"]
        assert reject["field"] == "image" and reject["file"] == str(task_file), reject
        assert re.search(pattern, reject["reason"]), reject
    assert by_id["list"]["field"] == "image[1]" and re.search(EXPECTED_REASON["fifo"], by_id["list"]["reason"])
    assert by_id["secret"]["field"] == "image" and "not an encoded PNG" in by_id["secret"]["reason"]
    assert all("SECRET" not in r["reason"] and "\\x00" not in r["reason"] for r in rejects)


@pytest.mark.timeout(120)
def test_load_task_rejects_hostile_image_paths(task):
    path, hostile = task
    items, rejects, read = bounded_call(lambda: load_task(path), fifos=[hostile["fifo"]], seconds=20)
    assert read == 7 and [i.id for i in items] == ["good"]
    _check_rejects([r.__dict__ for r in rejects], path)


@pytest.mark.timeout(180)
def test_general_command_rejects_hostile_image_paths_and_runs_the_rest(task, tmp_path, capsys):
    path, hostile = task
    out = tmp_path / "out"
    with LoopbackOpenAIServer(responder=lambda body: "It is blue.", model="m") as model:
        args = ["general", "--data", str(path), "--model", model.base_url, "--output_dir", str(out), "--grader", "none"]
        assert bounded_call(lambda: main(args), fifos=[hostile["fifo"]], seconds=60) == 0
    assert "read 7 records = 1 evaluated + 6 rejected" in capsys.readouterr().out
    _check_rejects([json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()], path)
    results = json.loads((out / "results.json").read_text())
    assert results["results"]["hostile_task"]["accuracy,none"] == 1.0


@pytest.mark.timeout(120)
def test_results_folder_image_references_must_be_regular_files(tmp_path):
    results = tmp_path / "results"
    hostile = hostile_paths(results / "images")
    (results / "images" / "zero.png").symlink_to("/dev/zero")  # resolves outside the folder: refused as such
    cases = {str(p.relative_to(results)): EXPECTED_REASON[k] for k, p in hostile.items() if k != "dev_zero"}
    cases["images/zero.png"] = "points outside the results folder"
    for ref, reason in cases.items():
        for read in (load_image, image_data_url_of):
            with pytest.raises(ValueError, match=reason) as info:
                bounded_call(lambda read=read, ref=ref: read(results, ref), fifos=[hostile["fifo"]], seconds=20)
            assert repr(ref) in str(info.value)
