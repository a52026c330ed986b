"""Data preparation outputs appear complete or not at all: a failed or interrupted run never leaves a
complete-looking file, never touches an earlier run's outputs, and a finished run removes outputs it did not produce."""

import pytest

from am3_verl.data import cold_start, intersafe_v
from am3_verl.data.sample import SAMPLE_DIR


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.mark.parametrize("interruption", [KeyboardInterrupt, RuntimeError])
def test_an_interrupted_conversion_keeps_the_earlier_outputs(tmp_path, monkeypatch, interruption):
    args = ["--input", str(SAMPLE_DIR / "intersafe_v.jsonl"), "--output_dir", str(tmp_path), "--val_size", "4", "--no_progress"]
    intersafe_v.main(args)
    before = _snapshot(tmp_path)
    real_drive = intersafe_v.drive

    def drive_then_fail(results, sinks, *rest):
        def first_then_interrupt():
            yield next(iter(results))
            raise interruption("stopped mid-run")

        real_drive(first_then_interrupt(), sinks, *rest)

    monkeypatch.setattr(intersafe_v, "drive", drive_then_fail)
    with pytest.raises(interruption):
        intersafe_v.main(args + ["--seed", "7"])
    assert _snapshot(tmp_path) == before  # nothing replaced, nothing partial left behind
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_cold_start_run_removes_evaluation_files_of_an_earlier_run(tmp_path):
    common = ["--refusal", str(SAMPLE_DIR / "refusal_vqa.jsonl"), "--output_dir", str(tmp_path), "--no_progress"]
    cold_start.main(common + ["--val_size", "2"])
    assert (tmp_path / "refusal_eval.parquet").is_file() and (tmp_path / "cold_start_val.parquet").is_file()
    cold_start.main(common)  # no validation split this time: the old one would leak training rows into evaluation
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cold_start.parquet", "rejects.jsonl"]
