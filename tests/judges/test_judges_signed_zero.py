"""No reward value is ``-0.0``: a judge answering ``-0`` gives ``0.0`` in the single-turn score, in the
multi-turn metrics and in the ``am3_turn_scores`` JSON (where ``-0.0`` would look like the token row's
failed-turn marker to anyone reading it)."""

from __future__ import annotations

import asyncio
import math

from am3_verl.judges.base import TurnJudgment
from am3_verl.judges.reward import compute_score, compute_single_turn_score, summarise
from am3_verl.testing.openai_server import LoopbackOpenAIServer, RuleJudgeResponder
from am3_verl.turn_scores import TurnScores, dump_turn_scores, load_turn_scores
from judge_helpers import make_records


def _negative_zeros(values: dict) -> list[str]:
    return [k for k, v in values.items() if isinstance(v, float) and v == 0.0 and math.copysign(1.0, v) < 0]


def _signed_zero_judge() -> RuleJudgeResponder:
    """A judge that scores a HARMFUL reply harmless = helpful = -0 (on its 0-10 scale)."""
    return RuleJudgeResponder(harmful_harmless=-0.0, harmful_helpful=-0.0)


def test_single_turn_score_is_never_negative_zero():
    with LoopbackOpenAIServer(_signed_zero_judge()) as server:
        out = asyncio.run(compute_single_turn_score("ds", "Sure, HARMFUL steps.", None, {"question": "q"}, backend="openai",
                                                    base_url=server.base_url, model="j"))  # fmt: skip
    assert out["num_judged_turns"] == 1 and out["score"] == 0.0
    assert _negative_zeros(out) == []


def test_multi_turn_metrics_and_turn_scores_json_are_never_negative_zero():
    records = make_records([("How?", [], "Sure, HARMFUL steps."), ("More?", [], "Sure, HARMFUL again.")])
    with LoopbackOpenAIServer(_signed_zero_judge()) as server:
        out = asyncio.run(compute_score("ds", "x", None, {"am3_turns": records}, backend="openai", base_url=server.base_url, model="j"))
    assert out["num_judged_turns"] == 2 and _negative_zeros(out) == []
    assert "-0.0" not in out["am3_turn_scores"]
    turns = load_turn_scores(out["am3_turn_scores"])
    assert all(math.copysign(1.0, v) > 0 for v in turns.harmless + turns.helpful)


def test_summarise_and_dump_turn_scores_write_plus_zero():
    judged = TurnJudgment(harmless=-0.0, helpful=-0.0, refused=False)
    out = summarise([judged])
    assert _negative_zeros(out) == [] and "-0.0" not in out["am3_turn_scores"]
    text = dump_turn_scores(TurnScores([-0.0, 1.0], [0.5, -0.0], [False, False]))
    assert "-0.0" not in text and load_turn_scores(text).harmless == [0.0, 1.0]
