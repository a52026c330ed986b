"""The bundled sample data: regenerates identically (text byte for byte, images pixel for pixel) and has the promised shape."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from am3_verl.data.sample import SAMPLE_DIR
from am3_verl.dialogue import BENIGN, HARM_CATEGORIES, Dialogue, RefusalSample
from file_contents import differences


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_sample_regenerates_identically(tmp_path):
    out = tmp_path / "sample"
    subprocess.run([sys.executable, "-m", "am3_verl.data.sample", "--output_dir", str(out)], check=True)
    assert differences(out, SAMPLE_DIR) == []


def test_sample_shape():
    total_bytes = sum(len(b) for b in _files(SAMPLE_DIR).values())
    assert total_bytes < 1_000_000
    dialogues = [Dialogue.model_validate_json(line) for line in (SAMPLE_DIR / "intersafe_v.jsonl").read_text().splitlines()]
    assert 20 <= len(dialogues) <= 30
    harm = {d.category for d in dialogues if d.category in HARM_CATEGORIES}
    assert len(harm) >= 8
    assert sum(d.category == BENIGN for d in dialogues) >= 5
    assert all(2 <= len(d.turns) <= 5 for d in dialogues)
    assert 1.3 <= sum(d.num_images for d in dialogues) / len(dialogues) <= 1.7
    assert any(not d.turns[0].images for d in dialogues), "a dialogue whose first turn has no image"
    for d in dialogues:
        for t, turn in enumerate(d.turns):
            for k, path in enumerate(turn.images):
                assert path == f"images/{d.id}-{t}-{k}.png"
                assert (SAMPLE_DIR / path).is_file()
    refusal = [RefusalSample.model_validate_json(line) for line in (SAMPLE_DIR / "refusal_vqa.jsonl").read_text().splitlines()]
    assert {r.domain for r in refusal} == {"general", "health", "finance"}
    assert all(r.answer.startswith("I'm sorry") for r in refusal)
    general = [RefusalSample.model_validate_json(line) for line in (SAMPLE_DIR / "general.jsonl").read_text().splitlines()]
    assert {g.domain for g in general} == {"general"} and len(general) >= 8
    safemt = json.loads((SAMPLE_DIR / "safemt.json").read_text())
    for item in safemt:
        assert set(item) == {"id", "scenario", "image_path", "dialogue", "question"}
        assert item["dialogue"][-1]["role"] == "user"
        assert (SAMPLE_DIR / item["image_path"]).is_file()
