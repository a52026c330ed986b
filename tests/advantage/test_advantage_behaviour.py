"""The defined behaviours of am3_grpo (docs/advantage.md), on small batches computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from verl.trainer.config import AlgoConfig
from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage

from adv_rows import synthetic_batch
from am3_verl.advantage import compute_am3_grpo_advantage
from am3_verl.advantage.config import VARIANTS, Am3AdvantageConfig
from am3_verl.advantage.estimator import compute_am3
from am3_verl.turn_scores import TurnScores, encode_row

EPS = 1e-6


def rows(*dialogues: list[tuple], length: int | None = None, turn_len: int = 2):
    """Rows from dialogues given as lists of (harmless, helpful) or None (judge failed) per turn."""
    masks, scores = [], []
    for turns in dialogues:
        mask = []
        for t in range(len(turns)):
            mask += ([0, 0, 0] if t else []) + [1] * turn_len
        masks.append(mask + [0])
        scores.append(
            TurnScores(
                harmless=[0.0 if x is None else x[0] for x in turns],
                helpful=[0.0 if x is None else x[1] for x in turns],
                failed=[x is None for x in turns],
            )
        )
    length = length or max(len(m) for m in masks)
    mask_t = torch.tensor([m + [0] * (length - len(m)) for m in masks])
    rewards_t = torch.stack([encode_row(m, s, length=length) for m, s in zip(masks, scores)])
    return rewards_t, mask_t


def first_token_advantages(rewards, mask, index, **am3):
    config = OmegaConf.create({"am3": am3}) if am3 else None
    advantages, _ = compute_am3_grpo_advantage(rewards, mask, np.array(index, dtype=object), config=config)
    first = mask.float().argmax(dim=1)
    return [float(advantages[i, first[i]]) if mask[i].any() else 0.0 for i in range(len(index))], advantages


def grpo_pair(r_a: float, r_b: float) -> tuple[float, float]:
    mean = (r_a + r_b) / 2
    std = abs(r_a - r_b) / math.sqrt(2)
    return (r_a - mean) / (std + EPS), (r_b - mean) / (std + EPS)


def softmax(values: list[float]) -> list[float]:
    exps = [math.exp(v) for v in values]
    return [e / sum(exps) for e in exps]


def test_truncated_dialogue_uses_only_rollouts_that_have_the_turn():
    # A has two turns, B was truncated after one. Turn 1: scores {1, 0.5}; turn 2: {0} from A alone.
    rewards, mask = rows([(1.0, 1.0), (0.0, 0.0)], [(0.5, 0.5)])
    u1 = 0.0625 + max(0.0, 0.5 - 0.75)  # var of {1, .5} (population) + no penalty
    u2 = 0.0 + 1.0 * max(0.0, 0.5 - 0.0)
    alpha = softmax([u1, u2])
    r_a = alpha[0] * 2.0 + alpha[1] * 0.0
    r_b = 1.0  # B's weights renormalised over its only turn
    got, _ = first_token_advantages(rewards, mask, ["g", "g"])
    assert got == pytest.approx(list(grpo_pair(r_a, r_b)), abs=1e-5)


def test_judge_failed_turn_is_left_out_of_statistics_and_reward():
    # A's second turn failed: turn 2 statistics come from B alone; A's reward is its first turn only.
    rewards, mask = rows([(0.8, 0.6), None], [(0.4, 0.2), (0.9, 0.9)])
    u1 = 0.04 + max(0.0, 0.5 - 0.6)
    u2 = 0.0 + max(0.0, 0.5 - 0.9)
    alpha = softmax([u1, u2])
    r_a = 0.8 + 0.6
    r_b = alpha[0] * 0.6 + alpha[1] * 1.8
    got, advantages = first_token_advantages(rewards, mask, ["g", "g"])
    assert got == pytest.approx(list(grpo_pair(r_a, r_b)), abs=1e-5)
    # The failed turn's tokens still get the rollout's advantage (it is one outcome for the dialogue).
    assert bool((advantages[0][mask[0] == 1] == got[0]).all())


@pytest.mark.parametrize("variant", VARIANTS)
def test_group_of_size_one_gets_zero_advantage(variant):
    rewards, mask = rows([(0.9, 0.2), (0.1, 0.7)], [(0.3, 0.3)], [(0.5, 0.6)])
    got, advantages = first_token_advantages(rewards, mask, ["solo", "pair", "pair"], variant=variant)
    assert got[0] == 0.0 and bool((advantages[0] == 0).all())
    # verl's grpo instead uses mean 0, std 1 for a singleton: the raw reward becomes the advantage.
    verl_adv, _ = compute_grpo_outcome_advantage(rewards, mask, np.array(["solo", "pair", "pair"], dtype=object))
    assert float(verl_adv[0, 0]) == pytest.approx(float(rewards[0].sum()), rel=1e-5)


@pytest.mark.parametrize("variant", VARIANTS)
def test_all_equal_scores_give_zero_advantage_and_uniform_weights(variant):
    rewards, mask = rows(*([[(0.7, 0.7)] * 3] * 4))
    _, advantages = first_token_advantages(rewards, mask, ["g"] * 4, variant=variant)
    assert bool((advantages == 0).all())
    stats = compute_am3(rewards, mask, np.array(["g"] * 4, dtype=object), Am3AdvantageConfig(variant=variant)).turns.stats
    assert stats.alpha[0].tolist() == pytest.approx([1 / 3] * 3)


def test_rollout_without_a_judged_turn_gets_zero_and_leaves_the_group_statistics():
    rewards, mask = rows([None, None], [(0.9, 0.9)], [(0.1, 0.1)])
    got, advantages = first_token_advantages(rewards, mask, ["g", "g", "g"])
    assert got[0] == 0.0 and bool((advantages[0] == 0).all())
    assert got[1:] == pytest.approx(list(grpo_pair(1.8, 0.2)), abs=1e-5)


@pytest.mark.parametrize("variant", VARIANTS)
def test_rows_without_turns_get_zero(variant):
    # verl's synthetic padding rows: no policy token at all.
    config = OmegaConf.create({"am3": {"variant": variant}})
    rewards, mask = rows([(0.9, 0.9)], [(0.1, 0.1)])
    pad_rewards = torch.zeros(2, rewards.shape[1])
    pad_mask = torch.zeros(2, rewards.shape[1], dtype=torch.int64)
    advantages, _ = compute_am3_grpo_advantage(
        torch.cat([rewards, pad_rewards]),
        torch.cat([mask, pad_mask]),
        np.array(["g", "g", "pad", "pad"], dtype=object),
        config=config,
    )
    assert bool((advantages[2:] == 0).all()) and bool((advantages[:2] != 0).any())
    all_pad, _ = compute_am3_grpo_advantage(pad_rewards, pad_mask, np.array(["pad", "pad"], dtype=object), config=config)
    assert all_pad.shape == pad_mask.shape and bool((all_pad == 0).all())
    empty, _ = compute_am3_grpo_advantage(
        torch.zeros(0, 5), torch.zeros(0, 5, dtype=torch.int64), np.array([], dtype=object), config=config
    )
    assert empty.shape == (0, 5)


def test_one_token_turns_reach_the_estimator_exactly():
    rewards, mask = rows([(0.25, 0.75), (1.0, 0.0), (0.5, 0.5)], [(0.0, 1.0), (0.75, 0.25), (0.125, 0.5)], turn_len=1)
    u = []
    for s in ([0.25, 0.0], [1.0, 0.75], [0.5, 0.125]):
        m = sum(s) / 2
        u.append(sum((x - m) ** 2 for x in s) / 2 + max(0.0, 0.5 - m))
    alpha = softmax(u)
    r_a = alpha[0] * 1.0 + alpha[1] * 1.0 + alpha[2] * 1.0
    r_b = alpha[0] * 1.0 + alpha[1] * 1.0 + alpha[2] * 0.625
    got, _ = first_token_advantages(rewards, mask, ["g", "g"])
    assert got == pytest.approx(list(grpo_pair(r_a, r_b)), abs=1e-5)


def test_norm_adv_by_std_false_gives_the_centred_reward():
    rewards, mask = rows([(1.0, 1.0)], [(0.5, 0.0)])
    config = OmegaConf.create({"norm_adv_by_std_in_grpo": False})
    advantages, _ = compute_am3_grpo_advantage(rewards, mask, np.array(["g", "g"], dtype=object), config=config)
    assert float(advantages[0, 0]) == pytest.approx(0.75) and float(advantages[1, 0]) == pytest.approx(-0.75)
    # The explicit argument wins over the config.
    advantages, _ = compute_am3_grpo_advantage(
        rewards, mask, np.array(["g", "g"], dtype=object), config=config, norm_adv_by_std_in_grpo=True
    )
    assert float(advantages[0, 0]) == pytest.approx(grpo_pair(2.0, 0.5)[0], abs=1e-5)


def test_plain_grpo_on_the_same_rows_optimises_the_uniform_weight_sum():
    batch = synthetic_batch(3, group_sizes=[6, 6, 6], p_truncate=0.0)
    expected_sum = torch.tensor([sum(s + h for s, h, f in zip(r.harmless, r.helpful, r.failed) if not f) for r in batch.records])
    torch.testing.assert_close(batch.token_level_rewards.sum(dim=-1), expected_sum.float(), rtol=1e-5, atol=1e-5)
    verl_adv, _ = compute_grpo_outcome_advantage(batch.token_level_rewards, batch.response_mask, batch.index)
    for label in set(batch.index):
        members = np.flatnonzero(batch.index == label)
        values = expected_sum[members].double()
        normalised = (values - values.mean()) / (values.std() + EPS)
        first = batch.response_mask[members].float().argmax(dim=1)
        got = verl_adv[members, first].double()
        torch.testing.assert_close(got, normalised, rtol=1e-4, atol=1e-4)


def test_use_kl_in_reward_fails_loudly():
    rewards, mask = rows([(1.0, 1.0)], [(0.5, 0.0)])
    for config in (OmegaConf.create({"use_kl_in_reward": True}), AlgoConfig(use_kl_in_reward=True)):
        with pytest.raises(ValueError, match="use_kl_in_reward"):
            compute_am3_grpo_advantage(rewards, mask, np.array(["g", "g"], dtype=object), config=config)


def test_rows_that_do_not_follow_the_contract_are_rejected_with_row_and_turn():
    rewards, mask = rows([(1.0, 1.0), (0.5, 0.5)], [(0.5, 0.0), (0.5, 0.5)])
    rewards[1, 6] = 1.5  # second rollout, turn 2's last token: a scalar reward on top of s
    with pytest.raises(ValueError, match=r"row 1, turn 1: harmless score 1\.5 is outside"):
        compute_am3_grpo_advantage(rewards, mask, np.array(["g", "g"], dtype=object))


def test_missing_or_mismatched_index_is_rejected():
    rewards, mask = rows([(1.0, 1.0)], [(0.5, 0.0)])
    with pytest.raises(ValueError, match="uid"):
        compute_am3_grpo_advantage(rewards, mask)
    with pytest.raises(ValueError, match="1 entries for a batch of 2"):
        compute_am3_grpo_advantage(rewards, mask, np.array(["g"], dtype=object))


def test_turn_credit_gives_each_turn_its_own_and_later_outcomes():
    rewards, mask = rows([(1.0, 1.0), (0.0, 0.0)], [(0.0, 0.0), (1.0, 1.0)])
    advantages, _ = compute_am3_grpo_advantage(
        rewards,
        mask,
        np.array(["g", "g"], dtype=object),
        config=OmegaConf.create({"am3": {"variant": "turn_credit", "discount": 0.5}}),
    )
    a = grpo_pair(2.0, 0.0)[0]  # the better rollout of a pair, per turn
    # Rollout A: turn 1 good (+a), turn 2 bad (-a): turn 1 gets a + 0.5 * (-a), turn 2 gets -a.
    assert float(advantages[0, 0]) == pytest.approx(a - 0.5 * a, abs=1e-5)
    assert float(advantages[0, 5]) == pytest.approx(-a, abs=1e-5)
    assert float(advantages[1, 0]) == pytest.approx(-a + 0.5 * a, abs=1e-5)
    assert float(advantages[1, 5]) == pytest.approx(a, abs=1e-5)
    assert bool((advantages[mask == 0] == 0).all())
