"""The report's plots tolerate bootstrap bounds a rounding error past their value; outputs appear whole or not at all."""

import json

import pytest

from am3_verl.eval import plots
from am3_verl.eval.report import write_report


def _items():
    turns = [{"index": 0, "user_text": "hello", "images": [], "reply": "I'm sorry, I can't.",
              "verdict": {"harmless": 1.0, "helpful": 0.4, "refused": True, "failed": False, "rationale": "r"}}]  # fmt: skip
    return [{"id": f"d{i}", "data_source": "s", "category": "violence", "harmful": True, "mode": "interactive", "turns": turns}
            for i in range(3)]  # fmt: skip


def test_bounds_past_the_value_by_a_rounding_error_are_drawn():
    by_turn = {"1": {"asr": {"value": 0.5, "ci": [0.5 + 5e-17, 0.7], "n": 4}},
               "2": {"asr": {"value": 0.25, "ci": [0.1, 0.25 - 5e-17], "n": 4}}}  # fmt: skip
    assert plots.by_turn_plot(by_turn, None, "asr", "ASR by turn", "ASR").startswith("data:image/png")
    assert plots.win_rate_plot({"helpful": {"value": 0.5, "ci": [0.5 + 1e-16, 0.6], "n": 3}}).startswith("data:image/png")


def test_a_failed_report_leaves_the_earlier_outputs_untouched(tmp_path, monkeypatch):
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(item) + "\n" for item in _items()))
    write_report(tmp_path, n_resamples=20)
    before = {name: (tmp_path / name).read_bytes() for name in ("metrics.json", "report.html")}

    def broken(*args, **kwargs):
        raise RuntimeError("plotting failed")

    monkeypatch.setattr(plots, "category_plot", broken)
    with pytest.raises(RuntimeError, match="plotting failed"):
        write_report(tmp_path, title="a new title", n_resamples=20)
    assert {name: (tmp_path / name).read_bytes() for name in before} == before
    assert not list(tmp_path.glob("*.partial"))
