"""Image parts that name a file, in the single-turn reward's ``raw_prompt``: only regular files up to the cap
are read; a FIFO, /dev/zero, an oversized file or a folder is a clear error naming the message and part,
raised at once (no hang, no unbounded read), and no error quotes a file's bytes."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from am3_verl.judges.reward import compute_single_turn_score
from hostile_files import CAP, EXPECTED_REASON, bounded_call, hostile_paths
from judge_helpers import make_png


def _raw_prompt(image: str) -> list[dict]:
    return [
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": [{"type": "text", "text": "What is in "}, {"type": "image", "image": image}]},
    ]


def _single_turn(image: str) -> dict:
    return asyncio.run(compute_single_turn_score("ds", "A reply.", None, {"raw_prompt": _raw_prompt(image)}, backend="heuristic"))


@pytest.fixture
def hostile(tmp_path) -> dict[str, Path]:
    return hostile_paths(tmp_path / "hostile")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", sorted(EXPECTED_REASON))
@pytest.mark.parametrize("prefix", ["", "file://"])
def test_single_turn_reward_refuses_hostile_image_paths(hostile, kind, prefix):
    path = hostile[kind]
    with pytest.raises(ValueError, match=rf"^raw_prompt\[1\]\.content\[1\]: image (path|file) {path} ") as info:
        bounded_call(lambda: _single_turn(prefix + str(path)), fifos=[hostile["fifo"]], seconds=20)
    assert info.match(EXPECTED_REASON[kind])
    assert len(str(info.value).splitlines()) == 1


def test_single_turn_reward_error_never_quotes_the_file(tmp_path):
    secret = tmp_path / "notes.png"
    secret.write_bytes(b"SECRET-KEY=sk-123456 and more text")
    with pytest.raises(ValueError, match=r"^raw_prompt\[1\]\.content\[1\]: not an encoded PNG") as info:
        _single_turn(str(secret))
    assert "SECRET" not in str(info.value) and "sk-1" not in str(info.value)


def test_single_turn_reward_reads_a_regular_image_file(tmp_path):
    path = tmp_path / "ok.png"
    path.write_bytes(make_png("green"))
    out = _single_turn(str(path))
    assert out["num_judged_turns"] == 1


@pytest.mark.timeout(120)
def test_read_image_file_checks_the_open_file_and_names_where(hostile, tmp_path):
    from am3_verl.clients.images import MAX_IMAGE_FILE_BYTES, ImageFileError, read_image_file

    assert MAX_IMAGE_FILE_BYTES == CAP
    for kind, path in hostile.items():
        with pytest.raises(ImageFileError, match=EXPECTED_REASON[kind]) as info:
            bounded_call(
                lambda path=path, kind=kind: read_image_file(path, CAP, f"row 7 field {kind}"), fifos=[hostile["fifo"]], seconds=20
            )
        assert info.value.where == f"row 7 field {kind}" and str(info.value).startswith(f"row 7 field {kind}: ")
    exact = tmp_path / "exact.bin"
    exact.write_bytes(b"x" * 100)
    assert read_image_file(exact, 100, "w") == b"x" * 100
    with pytest.raises(ImageFileError, match=r"^w: image file .*exact\.bin has 100 bytes, more than the 99 allowed$"):
        read_image_file(exact, 99, "w")
    with pytest.raises(ImageFileError, match=r"^w: image file not found: .*absent\.png$"):
        read_image_file(tmp_path / "absent.png", 99, "w")
