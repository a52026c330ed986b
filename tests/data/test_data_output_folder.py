"""The output folder: one conversion at a time (a folder lock), an empty ``--output_dir`` is refused, a
``README.md`` the data commands did not write is never replaced, a full disk is one clear error line with
no partial file left, and every output (``rejects.jsonl`` included) appears only complete."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from am3_verl.data import card, conversion, pipeline, validate
from am3_verl.data.cli import run_command
from am3_verl.data.errors import DataPrepError
from am3_verl.data.validate import Reject, RejectWriter

from data_helpers import CONVERTERS, png_bytes

LOCK_FILE = ".am3-data.lock"


@pytest.fixture
def source_of(tmp_path):
    """``source_of(case)``: an input file of two valid records for converter ``case`` (images next to it)."""
    (tmp_path / "img.png").write_bytes(png_bytes())

    def make(case, name: str = "in.jsonl") -> Path:
        path = tmp_path / name
        path.write_text("".join(json.dumps(case.record(f"r{i}")) + "\n" for i in range(2)), encoding="utf-8")
        return path

    return make


def _files(folder: Path) -> dict[str, bytes]:
    """The folder's files and their bytes (the lock file, which stays by design, left out)."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and p.name != LOCK_FILE}


# --- 1. one conversion per folder at a time ---------------------------------------------------------------


@pytest.mark.parametrize("converter", sorted(CONVERTERS))
def test_a_second_conversion_into_a_busy_folder_fails_fast(tmp_path, source_of, monkeypatch, converter):
    case = CONVERTERS[converter]
    source, out = source_of(case), tmp_path / "out"
    real_drive = conversion.drive
    second: list[BaseException] = []

    def drive_and_start_another(*args, **kwargs):
        if not second:  # while this run is converting, a second run starts into the same folder
            second.append(AssertionError("the second run was not refused"))
            try:
                case.run(source, out, "--val_size", "1") if converter == "cold_start" else case.run(source, out)
            except DataPrepError as exc:
                second[0] = exc
        return real_drive(*args, **kwargs)

    monkeypatch.setattr(conversion, "drive", drive_and_start_another)
    case.run(source, out)
    assert isinstance(second[0], DataPrepError), second[0]
    message = str(second[0])
    assert str(out) in message and "in use by another" in message and "--output_dir" in message
    # the first run completed with its own outputs only
    assert (out / "README.md").is_file() and (out / "rejects.jsonl").read_text() == ""
    assert not (out / "refusal_eval.parquet").exists()


def test_the_folder_is_free_again_after_a_run_and_after_a_failed_one(tmp_path, source_of):
    case = CONVERTERS["intersafe_v"]
    source, out = source_of(case), tmp_path / "out"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x"}\n')
    with pytest.raises(DataPrepError, match="no dialogue was written"):
        case.run(bad, out)
    case.run(source, out)
    case.run(source, out)


def test_eval_and_data_share_one_lock_helper():
    from am3_verl import folder_lock
    from am3_verl.eval import lock

    assert lock.OutputFolderBusy is folder_lock.FolderBusy
    assert conversion.LOCK_FILE == LOCK_FILE != lock.LOCK_FILE


# --- 2. the output folder's README.md ------------------------------------------------------------------------


@pytest.mark.parametrize("converter", sorted(CONVERTERS))
def test_an_empty_output_dir_is_refused(tmp_path, source_of, monkeypatch, converter):
    case = CONVERTERS[converter]
    source = source_of(case)
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    (checkout / "README.md").write_text("# my project\n")
    monkeypatch.chdir(checkout)
    for empty in ("", "  "):
        with pytest.raises(DataPrepError, match="--output_dir is empty"):
            case.run(source, empty)  # the raw string, as argparse gives it
    assert _files(checkout) == {"README.md": b"# my project\n"}


@pytest.mark.parametrize("converter", sorted(CONVERTERS))
def test_a_readme_the_data_commands_did_not_write_is_never_replaced(tmp_path, source_of, converter):
    case = CONVERTERS[converter]
    source, out = source_of(case), tmp_path / "out"
    out.mkdir()
    (out / "README.md").write_text("# hand-written notes\n")
    with pytest.raises(DataPrepError) as info:
        case.run(source, out)
    assert str(out / "README.md") in str(info.value)
    assert _files(out) == {"README.md": b"# hand-written notes\n"}  # nothing converted, nothing partial


def test_a_card_written_by_an_earlier_run_is_replaced(tmp_path, source_of):
    case = CONVERTERS["safemt"]
    source, out = source_of(case), tmp_path / "out"
    case.run(source, out)
    text = (out / "README.md").read_text()
    assert text.startswith("---\n") and card.CARD_MARKER in text.splitlines()
    case.run(source, out)  # replaced without complaint


def test_a_readme_that_appears_during_the_run_is_not_replaced(tmp_path, source_of, monkeypatch):
    case = CONVERTERS["intersafe_v"]
    source, out = source_of(case), tmp_path / "out"
    real_drive = conversion.drive

    def drive_then_someone_writes_a_readme(*args, **kwargs):
        counts = real_drive(*args, **kwargs)
        (out / "README.md").write_text("mine\n")
        return counts

    monkeypatch.setattr(conversion, "drive", drive_then_someone_writes_a_readme)
    with pytest.raises(DataPrepError, match="README.md"):
        case.run(source, out)
    assert _files(out) == {"README.md": b"mine\n"}


# --- 5a. a full disk --------------------------------------------------------------------------------------


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("converter", sorted(CONVERTERS))
@pytest.mark.parametrize("where", ["parquet_write", "parquet_close", "rejects", "card"])
def test_a_full_disk_is_one_error_line_and_leaves_no_partial_file(tmp_path, source_of, monkeypatch, capsys, converter, where):
    case = CONVERTERS[converter]
    source, out = source_of(case), tmp_path / "out"
    with source.open("a") as handle:
        handle.write("not json\n")  # one reject, so rejects.jsonl is written to
    case.run(source, out)
    before = _files(out)
    capsys.readouterr()
    target = {
        "parquet_write": (pipeline.ParquetSink, "write"),
        "parquet_close": (pipeline.ParquetSink, "close"),
        "rejects": (validate.RejectWriter, "write"),
        "card": (conversion.Conversion, "write_text"),
    }[where]
    monkeypatch.setattr(*target, _disk_full)
    status = run_command(case.main, case.argv(source, out))
    err = capsys.readouterr().err
    assert status == 1
    assert err.count("\n") == 1 and err.startswith("error: ") and "no space left" in err.lower() and "Traceback" not in err
    assert str(out) in err
    assert _files(out) == before  # the earlier run's outputs untouched, nothing partial
    assert not [p.name for p in out.iterdir() if p.name != LOCK_FILE and (p.name.startswith(".") or "partial" in p.name)]


def test_other_os_errors_are_not_reported_as_a_full_disk(tmp_path, source_of, monkeypatch):
    case = CONVERTERS["intersafe_v"]
    source, out = source_of(case), tmp_path / "out"

    def broken(*args, **kwargs):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(pipeline.ParquetSink, "write", broken)
    with pytest.raises(OSError, match="Input/output error"):
        case.run(source, out)
    assert not [p.name for p in out.iterdir() if p.name != LOCK_FILE]


# --- 5d. rejects.jsonl is written atomically -----------------------------------------------------------------


def test_a_reject_writer_shows_its_file_only_once_closed(tmp_path):
    path = tmp_path / "rejects.jsonl"
    writer = RejectWriter(path)
    writer.write(Reject(0, "a", "id", "bad"))
    assert not path.exists()
    writer.close()
    assert json.loads(path.read_text())["id"] == "a"
    assert [p.name for p in tmp_path.iterdir()] == ["rejects.jsonl"]


def test_a_discarded_reject_writer_leaves_no_file_and_keeps_the_earlier_one(tmp_path):
    path = tmp_path / "rejects.jsonl"
    path.write_text("earlier\n")
    with pytest.raises(RuntimeError):
        with RejectWriter(path) as writer:
            writer.write(Reject(0, "a", "id", "bad"))
            raise RuntimeError("stopped")
    assert [p.name for p in tmp_path.iterdir()] == ["rejects.jsonl"] and path.read_text() == "earlier\n"


def test_outputs_are_flushed_to_disk_before_they_are_renamed(tmp_path, source_of, monkeypatch):
    case = CONVERTERS["cold_start"]
    source, out = source_of(case), tmp_path / "out"
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd):
        synced.append(os.path.basename(os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    case.run(source, out)
    for name in ("cold_start.parquet", "rejects.jsonl", "README.md"):
        assert f".{name}.partial" in synced, (name, synced)
