"""Eval outputs under hostile conditions: an output folder that is a file, and a disk that fills up.

A full disk cannot be produced here, so it is simulated: ``open`` (``builtins.open`` and ``io.open``, which
``pathlib`` uses) is patched so that the first write to one chosen output puts half its data on disk and
then fails with ``ENOSPC``, as ``write(2)`` does on a full disk. Every run must then end with exit 1 and
one line saying so, leave no ``.partial``/``.tmp`` file, and leave nothing at the failed output's name
(so nothing looks complete); a rerun after space is freed completes.
"""

from __future__ import annotations

import builtins
import errno
import io
import json
import os
from pathlib import Path

import pytest

from am3_verl.data.sample import SAMPLE_DIR
from am3_verl.eval.cli import main
from am3_verl.testing.openai_server import LoopbackOpenAIServer

TEMP_SUFFIXES = (".partial", ".tmp")


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.strip() and not line.startswith("WARNING")]


def _leftovers(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.name.endswith(TEMP_SUFFIXES))


def _output_name(path: Path) -> str:
    """The output a (possibly temporary) file name stands for: ``images`` for any stored image."""
    if path.parent.name == "images":
        return "images"
    name = path.name
    for suffix in TEMP_SUFFIXES:
        name = name.removesuffix(suffix)
    return name


class _FullDiskFile:
    """A file on a full disk: the first write stores half its data, then fails with ENOSPC."""

    def __init__(self, fh) -> None:
        self._fh = fh

    def write(self, data):
        self._fh.write(data[: len(data) // 2])
        self._fh.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name):
        return getattr(self._fh, name)

    def __iter__(self):
        return iter(self._fh)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._fh.close()


@pytest.fixture
def full_disk(monkeypatch):
    """``full_disk(folder, output)``: from now on, writing ``output`` (a file name, or ``images``) in ``folder`` fails with ENOSPC."""
    real_open = builtins.open

    def arm(folder: Path, output: str) -> None:
        def fake_open(file, mode="r", *args, **kwargs):
            fh = real_open(file, mode, *args, **kwargs)
            if (
                isinstance(file, (str, os.PathLike))
                and any(c in mode for c in "wax")
                and Path(folder).resolve() in Path(file).resolve().parents
                and _output_name(Path(file)) == output
            ):
                return _FullDiskFile(fh)
            return fh

        monkeypatch.setattr(builtins, "open", fake_open)
        monkeypatch.setattr(io, "open", fake_open)

    yield arm
    monkeypatch.undo()


@pytest.fixture
def run_data(sample_data, tmp_path) -> list[Path]:
    """A parquet file with one row that is rejected (so ``rejects.jsonl`` has a line to write), then the sample."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.Table.from_pylist([{"prompt": [{"role": "user", "content": "hi"}], "data_source": "unknown_set", "id": "u1"}]), bad)
    return [bad, sample_data["intersafe_val"]]


def _run_args(data: list[Path], model, judge, out: Path) -> list[str]:
    return ["run", "--data", *map(str, data), "--model", model.base_url, "--output_dir", str(out), "--judge_backend",
            "openai", "--judge_base_url", judge.base_url, "--judge_model", judge.model, "--no_progress", "--bootstrap",
            "20", "--limit", "3"]  # fmt: skip


# ---------------------------------------------------------------------------------------- a file in the way
@pytest.mark.parametrize("command", ["run", "general", "report", "compare"])
@pytest.mark.parametrize("nested", [False, True], ids=["file", "below-a-file"])
def test_an_output_folder_that_is_a_file_is_one_clear_error(command, nested, tmp_path, capsys):
    blocker = tmp_path / "results.txt"
    blocker.write_text("keep me\n")
    folder = blocker / "sub" if nested else blocker
    model = ["--model", "http://127.0.0.1:9/v1"]
    args = {
        "run": ["run", "--data", str(tmp_path / "x.parquet"), *model, "--output_dir", str(folder), "--judge_backend", "heuristic"],
        "general": ["general", "--data", str(SAMPLE_DIR / "general.jsonl"), *model, "--output_dir", str(folder), "--grader", "none"],
        "report": ["report", "--results", str(folder)],
        "compare": ["compare", "--results", str(folder), "--baseline", str(tmp_path), "--judge_backend", "heuristic"],
    }[command]
    assert main(args) == 2
    lines = _error_lines(capsys.readouterr().err)
    flag = "--results" if command in ("report", "compare") else "--output_dir"
    assert len(lines) == 1 and lines[0].startswith(f"error: {flag} {folder}"), lines
    assert f"{blocker} exists and is not a folder" in lines[0]
    assert blocker.read_text() == "keep me\n"


# ---------------------------------------------------------------------------------------- a full disk
@pytest.mark.parametrize("output", ["rejects.jsonl", "images", "results.jsonl", "run.json", "metrics.json", "report.html"])
def test_a_full_disk_during_eval_run_is_one_line_and_leaves_nothing_partial(
    output, run_data, model_server, judge_server, full_disk, tmp_path, capsys
):
    out = tmp_path / "run"
    full_disk(out, output)
    assert main(_run_args(run_data, model_server, judge_server, out)) == 1
    assert _leftovers(out) == []
    if output == "images":
        assert not list((out / "images").glob("*")) and not (out / "results.jsonl").exists()
    else:
        assert not (out / output).exists()  # nothing at the failed output's name: it cannot pass for complete
    lines = _error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and lines[0].startswith("error: no space left on device while writing ("), lines
    assert "Free some space, then rerun the same command to resume." in lines[0]
    if output != "images":
        assert str(out / output) in lines[0]


def test_after_a_full_disk_the_rerun_completes(run_data, model_server, judge_server, full_disk, monkeypatch, tmp_path, capsys):
    out = tmp_path / "run"
    full_disk(out, "run.json")
    assert main(_run_args(run_data, model_server, judge_server, out)) == 1
    monkeypatch.undo()  # space freed
    served = model_server.stats().served
    assert main(_run_args(run_data, model_server, judge_server, out)) == 0
    assert model_server.stats().served == served  # every answer came from the cache
    assert json.loads((out / "run.json").read_text())["rows_read"] == 3
    assert (out / "metrics.json").is_file() and (out / "report.html").is_file() and _leftovers(out) == []


@pytest.mark.parametrize("output", ["rejects.jsonl", "samples_general.jsonl", "general.md", "results.json"])
def test_a_full_disk_during_eval_general_is_one_line_and_leaves_nothing_partial(output, full_disk, tmp_path, capsys):
    out = tmp_path / "general"
    full_disk(out, output)
    with LoopbackOpenAIServer(responder=lambda body: "It is blue.", model="m") as model:
        args = ["general", "--data", str(SAMPLE_DIR / "general.jsonl"), "--model", model.base_url, "--output_dir", str(out),
                "--grader", "none"]  # fmt: skip
        assert main(args) == 1
    assert _leftovers(out) == [] and not (out / output).exists() and not (out / "results.json").exists()
    lines = _error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and lines[0].startswith(f"error: no space left on device while writing ({out / output})"), lines
