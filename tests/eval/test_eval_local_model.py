"""A local Hugging Face folder as the model under evaluation: the tiny offline Qwen2.5-VL and LLaVA-NeXT
(random weights) generate with transformers on the CPU, images included, judged by the offline
heuristic judge; a rerun takes every answer from the cache."""

from __future__ import annotations

import json

import pytest

from am3_verl.eval.cli import main


@pytest.mark.slow
@pytest.mark.parametrize("name", ["qwen2_5_vl", "llava_next"])
def test_local_model_folder(tiny_models_dir, sample_data, safemt_fixture, tmp_path, name, capsys):
    out = tmp_path / name
    args = [
        "run",
        "--data",
        str(sample_data["intersafe_val"]),
        str(safemt_fixture[2]),
        "--model",
        str(tiny_models_dir / name),
        "--output_dir",
        str(out),
        "--judge_backend",
        "heuristic",
        "--max_tokens",
        "6",
        "--temperature",
        "1.0",
        "--max_turns",
        "2",
        "--limit",
        "4",
        "--no_progress",
        "--bootstrap",
        "20",
    ]
    assert main(args) == 0
    items = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(items) == 4
    generated = [t for i in items for t in i["turns"] if t["generated"]]
    assert generated and all(isinstance(t["reply"], str) and t["verdict"] and not t["verdict"]["failed"] for t in generated)
    assert all(len(i["turns"]) <= 2 for i in items if i["mode"] == "interactive")
    assert any(t["images"] for i in items for t in i["turns"] if t["generated"])  # image turns went through the processor
    run = json.loads((out / "run.json").read_text())
    assert run["model"] == f"local model {tiny_models_dir / name}" and run["judge"].startswith("heuristic")
    capsys.readouterr()
    assert main(args) == 0
    assert f"0 generated, {len(generated)} from the cache" in capsys.readouterr().out
