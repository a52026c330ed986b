"""The same-length vs mixed-length measurement of am3_verl.miniature.turn_count_bias, on hand-made rollouts."""

from __future__ import annotations

import pytest

from am3_verl.advantage.turn_score_dump import RolloutTurnScores
from am3_verl.miniature.turn_count_bias import cut_lengths, measure, same_length_groups


def rollout(step, uid, harmless, helpful=None):
    helpful = helpful if helpful is not None else [0.5] * len(harmless)
    return RolloutTurnScores(step=step, uid=uid, harmless=tuple(harmless), helpful=tuple(helpful), failed=(False,) * len(harmless))


def test_groups_are_counted_by_why_they_are_kept_or_not():
    rollouts = [
        *(rollout(1, "a", [1.0, 0.0, 1.0]) for _ in range(4)),  # kept
        rollout(1, "b", [1.0, 1.0]), rollout(1, "b", [1.0]),  # already mixed
        rollout(1, "c", [1.0, 1.0]),  # one rollout
        rollout(2, "a", [0.5]), rollout(2, "a", [0.5]),  # one turn (step 2's "a" is another group)
    ]  # fmt: skip
    kept, counts = same_length_groups(rollouts)
    assert [g.key for g in kept] == ["1:a"]
    assert counts == {"groups": 4, "kept": 1, "already_mixed": 1, "single_rollout": 1, "single_turn": 1}


def test_cuts_are_shorter_deterministic_and_drawn_at_the_given_rate():
    groups, _ = same_length_groups([rollout(1, str(g), [1.0] * 4) for g in range(200) for _ in range(8)])
    lengths = cut_lengths(groups, 0.25, seed=3)
    assert lengths == cut_lengths(groups, 0.25, seed=3)
    flat = [n for row in lengths for n in row]
    assert all(1 <= n <= 4 for n in flat)
    assert sum(n < 4 for n in flat) / len(flat) == pytest.approx(0.25, abs=0.03)
    with pytest.raises(ValueError, match="cut_probability"):
        cut_lengths(groups, 1.0, seed=0)


def test_identical_turns_am3_ignores_length_while_grpo_penalises_the_cut_rollouts():
    # Every turn of every rollout scores the same: a weighted mean over turns (AM3) does not depend on how
    # many turns a rollout has, a sum (verl's grpo) does.
    rollouts = [rollout(1, str(g), [0.8] * 4, [0.6] * 4) for g in range(20) for _ in range(8)]
    result = measure(rollouts, cut_probability=0.5, seed=0)
    assert result["groups"]["kept"] == 20 and 0 < result["cut_rollouts"] < result["rollouts"]
    assert result["mixed_length_fraction"] > 0.8  # a group stays same-length when its draws agree
    for estimator in ("am3_grpo", "min_mean"):
        figures = result["estimators"][estimator]
        assert figures["cut_mean_abs_change"] == 0 and figures["kept_mean_abs_change"] == 0
    grpo = result["estimators"]["grpo"]
    assert grpo["cut_mean_change"] < -0.5 and grpo["kept_mean_abs_change"] > 0.1


def test_the_kept_rollouts_move_only_through_their_groups_statistics():
    # One unsafe late turn in half the rollouts: cutting removes it from some, which changes turn 3's
    # group statistics (eqs. 6-8) and so the weight the kept rollouts put on their own turn 3.
    unsafe, safe = [1.0, 1.0, 0.0], [1.0, 1.0, 1.0]
    rollouts = [rollout(1, str(g), unsafe if i % 2 else safe) for g in range(30) for i in range(8)]
    result = measure(rollouts, cut_probability=0.5, seed=1)
    paper = result["estimators"]["am3_grpo"]
    assert paper["kept_mean_abs_change"] > 0
    assert paper["cut_mean_change"] > 0  # cutting an unsafe last turn off raises that rollout's reward
    assert 0 < paper["correlation"] < 1


def test_nothing_to_cut_is_an_error():
    with pytest.raises(ValueError, match="no group"):
        measure([rollout(1, "a", [1.0]), rollout(1, "a", [0.0])])
