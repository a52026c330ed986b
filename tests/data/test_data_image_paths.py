"""Image paths must name regular files (never a device, FIFO or folder), under a size cap, inside --image_root when given."""

import json
import os

import pytest

from am3_verl.data import intersafe_v
from am3_verl.data.errors import DataPrepError
from am3_verl.data.images import ImageCheckError, ImagePolicy, read_image_source


@pytest.fixture
def fifo(tmp_path):
    path = tmp_path / "pipe.png"
    os.mkfifo(path)
    return path


@pytest.mark.parametrize("entry", ["/dev/zero", "FIFO", "FOLDER"])
def test_only_regular_files_are_read(entry, fifo, tmp_path):
    path = {"FIFO": str(fifo), "FOLDER": str(tmp_path)}.get(entry, entry)
    with pytest.raises(ImageCheckError, match="not a regular file"):
        read_image_source(path, tmp_path)  # a FIFO would block forever, /dev/zero would fill memory


def test_a_file_over_the_size_cap_is_refused_before_reading(tmp_path):
    big = tmp_path / "big.png"
    big.write_bytes(b"\0" * 2048)
    with pytest.raises(ImageCheckError, match="2048 bytes, more than the 1024 allowed"):
        read_image_source(str(big), tmp_path, ImagePolicy(max_file_bytes=1024))


def test_image_root_confines_every_path(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    (tmp_path / "secret.png").write_bytes(b"x")
    (root / "link.png").symlink_to(tmp_path / "secret.png")
    policy = ImagePolicy(image_root=root)
    for entry in ("../secret.png", str(tmp_path / "secret.png"), "link.png"):
        with pytest.raises(ImageCheckError, match="outside --image_root"):
            read_image_source(entry, root, policy)


def test_bad_image_paths_become_reject_rows(tmp_path, fifo):
    dialogues = [
        {"id": f"d{i}", "category": "violence", "turns": [{"user": "What is in <image>?", "images": [path]}]}
        for i, path in enumerate(["/dev/zero", str(fifo), "/etc/hostname"])
    ]
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(d) + "\n" for d in dialogues))
    out = tmp_path / "out"
    with pytest.raises(DataPrepError):  # every dialogue rejected: nothing to train on
        intersafe_v.main(["--input", str(source), "--output_dir", str(out), "--image_root", str(tmp_path), "--no_progress"])
    reasons = [json.loads(line)["reason"] for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert len(reasons) == 3
    assert "not a regular file" in reasons[1] and "outside --image_root" in reasons[0] and "outside --image_root" in reasons[2]
