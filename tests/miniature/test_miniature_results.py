"""``results.json``'s summary over seeds and the report written from it."""

from __future__ import annotations

import math

import pytest

from am3_verl.miniature.report import CURVE_PANELS, _mean_curve, write_report
from am3_verl.advantage.turn_score_dump import RolloutTurnScores
from am3_verl.miniature.results import build_results, mean_ci95
from am3_verl.miniature.turn_count_bias import measure


def _side(asr):
    return {
        "asr": asr,
        "turn_asr": asr / 3,
        "over_refusal": 0.1,
        "harmless": 1 - asr / 3,
        "helpful": 0.5,
        "refusal_rate_harmful": 0.0,
        "asr_by_turn": {"1": 0.0, "2": asr},
        "n_harmful": 18,
        "n_benign_turns": 50,
    }


def _record(seed, estimator, asr_before, asr_after):
    curve = {str(s): {"reward/mean": 1.0 + s / 10, "asr": 0.2 - s / 100, "harmless/mean": 0.9, "helpful/mean": 0.4} for s in (1, 2, 3)}
    return {"seed": seed, "estimator": estimator, "before": _side(asr_before), "after": _side(asr_after), "curve": curve}


def _bias(seed):
    scores = ([1.0, 1.0, 0.0], [1.0, 0.5, 1.0], [1.0, 1.0, 1.0])
    rollouts = [RolloutTurnScores(1, str(g), scores[(g + i) % 3], (0.5,) * 3, (False,) * 3) for g in range(6) for i in range(4)]
    return measure(rollouts, cut_probability=0.5, seed=seed)


def test_mean_and_student_t_interval_over_seeds():
    mean, ci = mean_ci95([0.2, 0.4, 0.6])
    half = 4.302652729911275 * 0.2 / math.sqrt(3)  # t(0.975, df=2) * sd / sqrt(n)
    assert mean == pytest.approx(0.4) and ci == pytest.approx([0.4 - half, 0.4 + half])
    assert mean_ci95([0.3]) == (0.3, None)
    assert mean_ci95([None, float("nan")]) == (None, None)


def test_summary_per_estimator_and_report(tmp_path):
    records = [_record(s, "am3_grpo", 0.9, a) for s, a in ((0, 0.2), (1, 0.4), (2, 0.3))] + [_record(0, "grpo", 0.9, 0.8)]
    for record in records[:2]:
        record["turn_count_bias"] = _bias(record["seed"])
    results = build_results(records, config={"seeds": 3, "first_seed": 0, "sft_steps": 1, "steps": 3, "prompts": 4,
                                             "rollouts": 4}, wall_s=12.0, stage_seconds={"GRPO (main_ppo)": 10.0},
                            judge_stats={"requests": 5})  # fmt: skip
    am3 = results["summary"]["am3_grpo"]
    assert am3["seeds"] == [0, 1, 2]
    assert am3["asr_before"] == pytest.approx(0.9) and am3["asr_after"] == pytest.approx(0.3)
    assert am3["per_seed"]["asr_after"] == [0.2, 0.4, 0.3]
    assert am3["asr_relative_reduction"] == pytest.approx(2 / 3)
    assert am3["ci95"]["asr_after"][0] < 0.3 < am3["ci95"]["asr_after"][1]
    assert {"over_refusal_before", "over_refusal_after", "helpful_before", "helpful_after"} <= am3.keys()
    assert am3["asr_by_turn_after"] == {"1": 0.0, "2": pytest.approx(0.3)}
    assert results["summary"]["grpo"]["ci95"]["asr_after"] is None  # one seed: no interval

    bias = results["turn_count_bias"]
    assert bias["seeds"] == [0, 1] and bias["rollouts_of"] == ["am3_grpo"] and bias["rollouts"] == 48
    per_seed = [records[i]["turn_count_bias"]["estimators"]["grpo"]["cut_mean_change"] for i in (0, 1)]
    assert bias["estimators"]["grpo"]["cut_mean_change"]["per_seed"] == per_seed
    assert bias["estimators"]["grpo"]["cut_mean_change"]["mean"] == pytest.approx(sum(per_seed) / 2)

    for key, _ in CURVE_PANELS:  # every panel of curves.png has a line to draw
        steps, values = _mean_curve(results["runs"], key)
        assert steps == [1, 2, 3] and not any(math.isnan(v) for v in values), key

    report = write_report(results, tmp_path)
    page = report.read_text()
    assert "Turn-count bias" in page and "mixed-length" in page
    assert "am3_grpo" in page and "0.300 [" in page and "curves.png" in page
    assert (tmp_path / "curves.png").read_bytes().startswith(b"\x89PNG")
    assert not list(tmp_path.glob("*.partial"))
