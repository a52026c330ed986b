"""am3_grpo against the plain-loop reference (adv_reference.py) on random batches, and its properties."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from adv_reference import reference_am3
from adv_rows import synthetic_batch
from am3_verl.advantage import compute_am3_grpo_advantage
from am3_verl.advantage.config import VARIANTS, Am3AdvantageConfig
from am3_verl.advantage.estimator import compute_am3
from am3_verl.turn_scores import TurnScores, encode_row

SETTINGS = st.fixed_dictionaries(
    {
        "tau": st.floats(0.0, 1.0),
        "lambda_": st.floats(0.0, 3.0),
        "beta": st.floats(0.0, 2.0),
        "temperature": st.floats(0.05, 5.0),
        "discount": st.floats(0.0, 1.0),
    }
)


def algorithm_config(variant: str, norm: bool = True, **settings_) -> object:
    return OmegaConf.create({"norm_adv_by_std_in_grpo": norm, "am3": {"variant": variant, **settings_}})


@settings(max_examples=80, deadline=None)
@given(
    seed=st.integers(0, 10**6),
    variant=st.sampled_from(VARIANTS),
    norm=st.booleans(),
    settings_=SETTINGS,
    levels=st.sampled_from([None, 2, 4]),
)
def test_estimator_matches_reference(seed, variant, norm, settings_, levels):
    rng = random.Random(seed)
    sizes = [rng.randint(1, 8) for _ in range(rng.randint(1, 5))]
    batch = synthetic_batch(seed, group_sizes=sizes, levels=levels)
    advantages, returns = compute_am3_grpo_advantage(
        batch.token_level_rewards, batch.response_mask, batch.index, config=algorithm_config(variant, norm, **settings_)
    )
    ref = reference_am3(
        batch.token_level_rewards.tolist(),
        batch.response_mask.tolist(),
        list(batch.index),
        variant=variant,
        norm_by_std=norm,
        **settings_,
    )
    expected = torch.tensor(ref.advantages, dtype=torch.float32)
    # Tied scores leave an exactly-zero group std in the reference but may leave ~1e-8 in float math;
    # the whitened variant divides by it, so compare relative to the scale of the values.
    torch.testing.assert_close(advantages, expected, rtol=1e-4, atol=1e-4 * max(1.0, float(expected.abs().max())))
    assert returns is advantages
    assert advantages.dtype == torch.float32
    assert bool((advantages[batch.response_mask == 0] == 0).all())


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10**6), settings_=SETTINGS)
def test_alpha_sums_to_one_is_shared_and_matches_reference(seed, settings_):
    batch = synthetic_batch(seed, num_groups=3, group_size=6)
    cfg = Am3AdvantageConfig(**{k: v for k, v in settings_.items()})
    computation = compute_am3(batch.token_level_rewards, batch.response_mask, batch.index, cfg)
    stats, turns = computation.turns.stats, computation.turns
    ref = reference_am3(batch.token_level_rewards.tolist(), batch.response_mask.tolist(), list(batch.index), **settings_)
    labels = sorted(set(batch.index))
    for g, label in enumerate(labels):
        present = stats.present[g]
        if bool(present.any()):
            assert math.isclose(float(stats.alpha[g].sum()), 1.0, abs_tol=1e-9)
        assert bool((stats.alpha[g][~present] == 0).all())
        expected = ref.alpha[label] + [0.0] * (stats.alpha.shape[1] - len(ref.alpha[label]))
        np.testing.assert_allclose(stats.alpha[g].numpy(), expected, atol=1e-9)
        # Shared across the group: every rollout with all of the group's present turns judged uses alpha.
        for i in np.flatnonzero(batch.index == label):
            if bool((turns.valid[i] == present).all()):
                np.testing.assert_allclose(turns.weights[i].numpy(), stats.alpha[g].numpy(), atol=1e-9)
            elif bool(turns.valid[i].any()):
                assert math.isclose(float(turns.weights[i].sum()), 1.0, abs_tol=1e-9)


def group_rows(harmless_by_rollout: list[list[float]], helpful: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    masks, rows = [], []
    for harmless in harmless_by_rollout:
        mask = []
        for t in range(len(harmless)):
            mask += ([0, 0] if t else []) + [1] * (t + 1)
        mask.append(0)
        scores = TurnScores(harmless=harmless, helpful=[helpful] * len(harmless), failed=[False] * len(harmless))
        masks.append(mask)
        rows.append((mask, scores))
    length = max(len(m) for m in masks)
    mask_t = torch.tensor([m + [0] * (length - len(m)) for m in masks])
    rewards_t = torch.stack([encode_row(m, s, length=length) for m, s in rows])
    return rewards_t, mask_t


@settings(max_examples=40, deadline=None)
@given(
    base=st.lists(st.floats(0.0, 1.0), min_size=2, max_size=8),
    turns=st.integers(2, 5),
    tau=st.floats(0.0, 1.0),
    seed=st.integers(0, 1000),
)
def test_uniform_alpha_when_turns_have_equal_variance_and_safe_means(base, turns, tau, seed):
    # Every turn sees the same multiset of scores (shuffled across rollouts): equal mean and variance.
    mean = sum(base) / len(base)
    if mean < tau:
        tau = mean  # the condition of the property: mean >= tau on every turn
    rng = random.Random(seed)
    columns = [rng.sample(base, len(base)) for _ in range(turns)]
    harmless = [[columns[t][i] for t in range(turns)] for i in range(len(base))]
    rewards, mask = group_rows(harmless)
    cfg = Am3AdvantageConfig(tau=tau, lambda_=2.0)
    stats = compute_am3(rewards, mask, np.array(["g"] * len(base), dtype=object), cfg).turns.stats
    np.testing.assert_allclose(stats.alpha[0].numpy(), [1.0 / turns] * turns, atol=1e-6)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10**6), settings_=SETTINGS)
def test_alpha_orders_turns_by_uncertainty(seed, settings_):
    batch = synthetic_batch(seed, num_groups=2, group_size=8, levels=10)
    cfg = Am3AdvantageConfig(**settings_)
    stats = compute_am3(batch.token_level_rewards, batch.response_mask, batch.index, cfg).turns.stats
    for g in range(stats.alpha.shape[0]):
        present = torch.nonzero(stats.present[g]).flatten().tolist()
        for a in present:
            for b in present:
                if float(stats.uncertainty[g, a]) > float(stats.uncertainty[g, b]) + 1e-9:
                    assert float(stats.alpha[g, a]) > float(stats.alpha[g, b])


def test_most_unsafe_and_most_uncertain_turns_get_the_largest_weight():
    # Turn 2 (index 1) is consistently unsafe: low mean, no spread.
    unsafe = [[0.9, 0.1, 0.8], [0.95, 0.05, 0.85], [0.9, 0.1, 0.9], [1.0, 0.0, 0.8]]
    rewards, mask = group_rows(unsafe)
    stats = compute_am3(rewards, mask, np.array(["g"] * 4, dtype=object), Am3AdvantageConfig()).turns.stats
    assert int(stats.alpha[0].argmax()) == 1
    # All turns safe on average; turn 3 (index 2) splits the group: largest variance.
    uncertain = [[0.9, 0.8, 0.0], [0.9, 0.8, 1.0], [0.8, 0.9, 0.0], [0.8, 0.9, 1.0]]
    rewards, mask = group_rows(uncertain)
    stats = compute_am3(rewards, mask, np.array(["g"] * 4, dtype=object), Am3AdvantageConfig(tau=0.4)).turns.stats
    assert int(stats.alpha[0].argmax()) == 2
    assert float(stats.alpha[0, 2]) > float(stats.alpha[0, 0]) > 0


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10**6), variant=st.sampled_from(VARIANTS), settings_=SETTINGS)
def test_invariant_to_rollout_order(seed, variant, settings_):
    batch = synthetic_batch(seed, group_sizes=[5, 8, 3])
    config = algorithm_config(variant, **settings_)
    advantages, _ = compute_am3_grpo_advantage(batch.token_level_rewards, batch.response_mask, batch.index, config=config)
    perm = torch.from_numpy(np.random.default_rng(seed).permutation(len(batch.index)))
    permuted, _ = compute_am3_grpo_advantage(
        batch.token_level_rewards[perm], batch.response_mask[perm], batch.index[perm.numpy()], config=config
    )
    torch.testing.assert_close(permuted, advantages[perm], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS)
def test_reference_agrees_on_a_batch_of_benchmark_shape_but_short_rows(variant):
    # 128 groups of 8 with 4 turns each (the benchmark's grouping), rows kept short for the loop reference.
    batch = synthetic_batch(7, num_groups=128, group_size=8, p_truncate=0.1, p_fail=0.05, max_turn_len=3, max_gap=2)
    advantages, _ = compute_am3_grpo_advantage(
        batch.token_level_rewards, batch.response_mask, batch.index, config=algorithm_config(variant)
    )
    ref = reference_am3(batch.token_level_rewards.tolist(), batch.response_mask.tolist(), list(batch.index), variant=variant)
    torch.testing.assert_close(advantages, torch.tensor(ref.advantages, dtype=torch.float32), rtol=1e-4, atol=1e-4)
