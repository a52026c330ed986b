"""The bundled seeds (regenerated identically: text byte for byte, images pixel for pixel; valid) and the offline demo that the docs' end-to-end
example runs: the bundled seeds through all stages against loopback endpoints, output accepted unchanged."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from am3_verl.builder.seeds import BUNDLED_SEEDS, BUNDLED_SEEDS_DIR, Seed
from am3_verl.data.intersafe_v import convert_intersafe_v
from am3_verl.dialogue import Dialogue

from builder_helpers import read_jsonl
from file_contents import differences

REPO = Path(__file__).resolve().parents[2]


def test_bundled_seeds_regenerate_identically_and_are_valid(tmp_path):
    subprocess.run([sys.executable, "-m", "am3_verl.builder.seeds", "--output_dir", str(tmp_path)], check=True, capture_output=True)
    assert differences(tmp_path, BUNDLED_SEEDS_DIR) == []
    seeds = [Seed.model_validate(record) for record in read_jsonl(BUNDLED_SEEDS)]
    assert len(seeds) == 6 and len({s.category for s in seeds}) == 6
    assert all((BUNDLED_SEEDS_DIR / s.image).is_file() for s in seeds)


def test_the_offline_demo_builds_dialogues_from_the_bundled_seeds(tmp_path):
    out = tmp_path / "demo"
    done = subprocess.run(
        [sys.executable, "-m", "am3_verl.builder.demo", "--output_dir", str(out), "--no_progress"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "Read 6 seeds = 6 valid + 0 rejected" in done.stdout and "Wrote 12 dialogue(s) with 24 image(s)" in done.stdout
    dialogues = [Dialogue.model_validate(record) for record in read_jsonl(out / "intersafe_v.jsonl")]
    assert len(dialogues) == 12 and all(len(d.turns) == 3 and d.num_images == 2 for d in dialogues)
    converted = convert_intersafe_v(out / "intersafe_v.jsonl", tmp_path / "rl", workers=1, progress=False, val_size=2)
    assert converted.counts.read == 12 and converted.counts.rejected == 0
    rerun = subprocess.run(
        [
            sys.executable,
            "data_prep/build_intersafe_v.py",
            "--seeds",
            str(BUNDLED_SEEDS),
            "--output_dir",
            str(out),
            "--config",
            str(out / "builder_config.yaml"),
            "--no_progress",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    # the demo's loopback servers are gone, but every seed is finished: the rerun makes no call and succeeds
    assert rerun.returncode == 0, rerun.stderr
    assert "advanced 0 seed(s)" in rerun.stdout and "Wrote 12 dialogue(s)" in rerun.stdout
