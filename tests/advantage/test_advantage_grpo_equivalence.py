"""Where ``am3_grpo`` (the ``paper`` variant) and plain ``grpo`` coincide, and where they must differ (docs/method.md,
"When am3_grpo equals grpo"), on rollouts recorded from a miniature run.

``data/miniature_rollouts/am3_turn_scores/<step>.jsonl`` is the per-turn score dump of an ``am3_grpo`` run of the
miniature (seed 0, 100 SFT steps, 3 GRPO steps of 4 dialogues x 8 rollouts), read with the
product's own reader. Both estimators run through verl's registry on the same token-reward rows, written with
the product's encoder.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch
from verl.trainer.ppo.core_algos import get_adv_estimator_fn

from am3_verl.advantage.config import Am3AdvantageConfig
from am3_verl.advantage.estimator import compute_am3
from am3_verl.advantage.metrics import am3_metrics
from am3_verl.advantage.turn_score_dump import RolloutTurnScores, read_turn_score_dumps
from am3_verl.turn_scores import TurnScores, encode_row

RECORDED = Path(__file__).parent / "data" / "miniature_rollouts"
STEPS = sorted({r.step for r in read_turn_score_dumps(RECORDED)})


def rows(rollouts: list[RolloutTurnScores]) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Token-reward rows as the dialogue environment lays them out: 3-token replies, 2-token user turns, the slot."""
    masks = [sum((([0, 0] if t else []) + [1, 1, 1] for t in range(len(r.harmless))), []) + [0] for r in rollouts]
    length = max(len(m) for m in masks)
    mask = torch.zeros(len(rollouts), length, dtype=torch.int64)
    rewards = torch.zeros(len(rollouts), length, dtype=torch.float32)
    for i, (m, r) in enumerate(zip(masks, rollouts)):
        mask[i, : len(m)] = torch.tensor(m)
        rewards[i] = encode_row(m, TurnScores(list(r.harmless), list(r.helpful), list(r.failed)), length=length)
    return rewards, mask, np.array([r.uid for r in rollouts], dtype=object)


def per_rollout_advantages(estimator: str, rewards: torch.Tensor, mask: torch.Tensor, index: np.ndarray) -> torch.Tensor:
    """Each rollout's advantage (its first policy token's) under verl's registered ``estimator``, defaults throughout."""
    advantages, _ = get_adv_estimator_fn(estimator)(token_level_rewards=rewards, response_mask=mask, index=index, config=None)
    return advantages[torch.arange(len(index)), mask.argmax(dim=1)].double()


def groups_by_weights(rewards: torch.Tensor, mask: torch.Tensor, index: np.ndarray) -> tuple[dict[str, list[int]], set[str], dict]:
    """Rows of each group, the groups whose turn weights are uniform, and the step's am3 metrics."""
    cfg = Am3AdvantageConfig()
    computation = compute_am3(rewards, mask.bool(), index, cfg)
    stats, ids = computation.turns.stats, computation.turns.ids
    members: dict[str, list[int]] = defaultdict(list)
    for row, uid in enumerate(index):
        members[uid].append(row)
    uniform = set()
    for uid, group_rows in members.items():
        g = int(ids[group_rows[0]])
        alpha = stats.alpha[g][stats.present[g]]
        if float(alpha.max() - alpha.min()) <= 1e-9:
            uniform.add(uid)
    return members, uniform, am3_metrics(computation, cfg)


def varying_turns(rollouts: list[RolloutTurnScores]) -> int:
    """How many turns' rewards (helpful + harmless, beta 1) differ across ``rollouts``."""
    turn_rewards = np.array([[s + h for s, h in zip(r.harmless, r.helpful)] for r in rollouts])
    return int((turn_rewards.max(axis=0) - turn_rewards.min(axis=0) > 1e-9).sum())


def assert_where_they_coincide_and_differ(rollouts: list[RolloutTurnScores]) -> tuple[int, int]:
    """Uniform-weight groups: equal advantages. Non-uniform groups with two or more varying turns: different ones."""
    rewards, mask, index = rows(rollouts)
    am3 = per_rollout_advantages("am3_grpo", rewards, mask, index)
    grpo = per_rollout_advantages("grpo", rewards, mask, index)
    members, uniform, metrics = groups_by_weights(rewards, mask, index)
    differing = 0
    for uid, group_rows in members.items():
        group = [rollouts[i] for i in group_rows]
        assert len({len(r.harmless) for r in group}) == 1 and not any(any(r.failed) for r in group)  # same-length groups
        a, b = am3[group_rows], grpo[group_rows]
        if uid in uniform:
            # identical up to eps: (R - M) / (S + 1e-6) against (R - M) / (S + T * 1e-6)
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)
        elif varying_turns(group) >= 2:
            assert float((a - b).abs().max()) > 1e-3, uid
            differing += 1
    nonuniform = len(members) - len(uniform)
    assert metrics["am3/alpha/nonuniform_group_fraction"] == pytest.approx(nonuniform / len(members))
    return len(uniform), differing


@pytest.mark.parametrize("step", STEPS)
def test_uniform_turn_weights_give_grpos_advantages_on_a_recorded_miniature_step(step):
    rollouts = [r for r in read_turn_score_dumps(RECORDED) if r.step == step]
    uniform, _ = assert_where_they_coincide_and_differ(rollouts)
    assert uniform >= 1  # the recorded run has groups whose every turn was judged harmless alike


def test_a_group_whose_safety_varies_by_turn_gets_other_advantages_than_grpo():
    rollouts = [r for r in read_turn_score_dumps(RECORDED) if r.step == STEPS[0]]
    _, uniform_before, _ = groups_by_weights(*rows(rollouts))
    target = sorted(uniform_before)[0]
    # Half of one uniform group's rollouts now fail the first turn (harmless 0, below tau) and their last
    # turn's helpfulness varies: that turn's weight changes, the rest of the batch is untouched.
    changed, seen = [], 0
    for r in rollouts:
        if r.uid == target:
            if seen % 2 == 0:
                r = RolloutTurnScores(r.step, r.uid, (0.0, *r.harmless[1:]), (*r.helpful[:-1], 0.1 * (seen % 4)), r.failed)
            seen += 1
        changed.append(r)
    uniform_after, differing = assert_where_they_coincide_and_differ(changed)
    assert uniform_after == len(uniform_before) - 1 and differing >= 1
