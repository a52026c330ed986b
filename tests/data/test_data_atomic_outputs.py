"""Data preparation outputs appear complete or not at all: a failed or interrupted run never leaves a
complete-looking file, never touches an earlier run's outputs, and a finished run removes outputs it did not produce."""

import pytest

from am3_verl.data import cold_start, conversion, intersafe_v
from am3_verl.data.conversion import LOCK_FILE
from am3_verl.data.sample import SAMPLE_DIR


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and p.name != LOCK_FILE}


@pytest.mark.parametrize("interruption", [KeyboardInterrupt, RuntimeError])
def test_an_interrupted_conversion_keeps_the_earlier_outputs(tmp_path, monkeypatch, interruption):
    args = ["--input", str(SAMPLE_DIR / "intersafe_v.jsonl"), "--output_dir", str(tmp_path), "--val_size", "4", "--no_progress"]
    intersafe_v.main(args)
    before = _snapshot(tmp_path)
    real_drive = conversion.drive

    def drive_then_fail(results, sinks, *rest):
        def first_then_interrupt():
            yield next(iter(results))
            raise interruption("stopped mid-run")

        real_drive(first_then_interrupt(), sinks, *rest)

    monkeypatch.setattr(conversion, "drive", drive_then_fail)
    with pytest.raises(interruption):
        intersafe_v.main(args + ["--seed", "7"])
    assert _snapshot(tmp_path) == before  # nothing replaced, nothing partial left behind
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".") and p.name != LOCK_FILE]


def test_a_cold_start_run_removes_evaluation_files_of_an_earlier_run(tmp_path):
    common = ["--refusal", str(SAMPLE_DIR / "refusal_vqa.jsonl"), "--output_dir", str(tmp_path), "--no_progress"]
    cold_start.main(common + ["--val_size", "2"])
    assert (tmp_path / "refusal_eval.parquet").is_file() and (tmp_path / "cold_start_val.parquet").is_file()
    cold_start.main(common)  # no validation split this time: the old one would leak training rows into evaluation
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != LOCK_FILE) == ["README.md", "cold_start.parquet", "rejects.jsonl"]


@pytest.mark.slow
def test_sigkill_leaves_no_workers_no_outputs_and_its_spool_is_removed_by_the_next_run(tmp_path):
    import json
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    import psutil

    lines = [json.loads(line) for line in (SAMPLE_DIR / "intersafe_v.jsonl").read_text().splitlines() if line.strip()]
    source = tmp_path / "many.jsonl"
    with source.open("w") as out:
        for k in range(150):  # enough dialogues to be killed mid-run
            for record in lines:
                out.write(json.dumps({**record, "id": f"{record['id']}-{k}"}) + "\n")
    out_dir = tmp_path / "out"
    command = [sys.executable, str(Path(__file__).resolve().parents[2] / "data_prep/intersafe_v.py"), "--input", str(source),
               "--output_dir", str(out_dir), "--image_root", str(SAMPLE_DIR), "--no_progress", "--workers", "2"]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not list(out_dir.glob(".am3-spool-*")) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    family = psutil.Process(process.pid).children(recursive=True)
    assert family, "the converter started no worker processes"
    process.send_signal(signal.SIGKILL)
    process.wait()
    gone, alive = psutil.wait_procs(family, timeout=15)
    assert not alive, [p.cmdline() for p in alive]  # workers and forkserver end with their parent
    assert not (out_dir / "rl_train.parquet").exists()  # nothing complete-looking
    assert list(out_dir.glob(".am3-spool-*"))  # what SIGKILL leaves behind...
    intersafe_v.main(["--input", str(SAMPLE_DIR / "intersafe_v.jsonl"), "--output_dir", str(out_dir), "--no_progress",
                      "--workers", "2"])  # fmt: skip
    assert not list(out_dir.glob(".am3-spool-*"))  # ...the next run removes
    assert (out_dir / "rl_train.parquet").is_file()
