"""decode_batch (the estimator's reader of the per-turn score layout) against a token-by-token reader."""

from __future__ import annotations

import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from adv_reference import read_turns
from adv_rows import random_mask, random_scores, synthetic_batch
from am3_verl.turn_scores import decode_batch, encode_row


def check_against_reader(rewards: torch.Tensor, mask: torch.Tensor) -> None:
    decoded = decode_batch(rewards, mask)
    turns = [read_turns(rewards[i].tolist(), mask[i].tolist()) for i in range(rewards.shape[0])]
    max_turns = max((len(t) for t in turns), default=0)
    assert decoded.harmless.shape == (rewards.shape[0], max_turns)
    assert decoded.num_turns.tolist() == [len(t) for t in turns]
    assert decoded.num_turns.dtype == torch.int64
    for i, row in enumerate(turns):
        for t in range(max_turns):
            exists = t < len(row)
            assert bool(decoded.exists[i, t]) == exists
            assert bool(decoded.valid[i, t]) == (exists and row[t].valid)
            assert float(decoded.harmless[i, t]) == (row[t].harmless if exists else 0.0)
            assert float(decoded.helpful[i, t]) == (row[t].helpful if exists else 0.0)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10**6), max_turn_len=st.integers(1, 5), p_fail=st.floats(0.0, 1.0))
def test_decode_matches_a_token_by_token_reader(seed, max_turn_len, p_fail):
    batch = synthetic_batch(seed, group_sizes=[3, 4], max_turn_len=max_turn_len, p_fail=p_fail, levels=4)
    check_against_reader(batch.token_level_rewards, batch.response_mask)


def test_decode_round_trips_what_encode_row_wrote_one_token_turns_included():
    rng = random.Random(5)
    masks, scores = [], []
    for turns in (1, 2, 4, 6):
        scores.append(random_scores(rng, turns, p_fail=0.3))
        masks.append(random_mask(rng, turns, max_turn_len=1, max_gap=1))  # every turn a single token
    length = max(len(m) for m in masks) + 2
    mask = torch.tensor([m + [0] * (length - len(m)) for m in masks])
    rewards = torch.stack([encode_row(m, s, length=length) for m, s in zip(masks, scores)])
    decoded = decode_batch(rewards, mask)
    for i, s in enumerate(scores):
        n = len(s)
        assert int(decoded.num_turns[i]) == n
        assert decoded.valid[i, :n].tolist() == [not f for f in s.failed]
        expected_h = [0.0 if f else torch.tensor(v).float().item() for v, f in zip(s.harmless, s.failed)]
        expected_p = [0.0 if f else torch.tensor(v).float().item() for v, f in zip(s.helpful, s.failed)]
        assert decoded.harmless[i, :n].tolist() == expected_h
        assert decoded.helpful[i, :n].tolist() == expected_p
    check_against_reader(rewards, mask)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool, torch.float32])
def test_decode_accepts_verl_mask_dtypes(dtype):
    batch = synthetic_batch(11, group_sizes=[4])
    reference = decode_batch(batch.token_level_rewards, batch.response_mask)
    decoded = decode_batch(batch.token_level_rewards, batch.response_mask.to(dtype))
    for name in ("harmless", "helpful", "valid", "exists", "num_turns"):
        assert torch.equal(getattr(decoded, name), getattr(reference, name))


def test_decode_empty_and_turnless_batches():
    decoded = decode_batch(torch.zeros(3, 6), torch.zeros(3, 6, dtype=torch.int64))
    assert decoded.harmless.shape == (3, 0) and decoded.num_turns.tolist() == [0, 0, 0]
    decoded = decode_batch(torch.zeros(0, 6), torch.zeros(0, 6, dtype=torch.int64))
    assert decoded.harmless.shape == (0, 0) and decoded.num_turns.shape == (0,)
    decoded = decode_batch(torch.zeros(2, 0), torch.zeros(2, 0, dtype=torch.int64))
    assert decoded.harmless.shape == (2, 0) and decoded.num_turns.tolist() == [0, 0]


def test_decode_rejects_a_turn_on_the_last_position_naming_the_row():
    mask = torch.tensor([[1, 1, 0, 0], [0, 1, 0, 0], [1, 0, 1, 1], [1, 1, 1, 1]])
    with pytest.raises(ValueError, match="row 2 has a turn ending on the last position"):
        decode_batch(torch.zeros(4, 4), mask)


def test_a_judged_negative_zero_is_a_score_not_the_failure_marker():
    from am3_verl.turn_scores import TurnScores, decode_batch, encode_row

    mask = torch.tensor([1, 1, 0, 1, 0])
    row = encode_row(mask, TurnScores(harmless=[-0.0, 1.0], helpful=[-0.0, 0.5], failed=[False, False]))
    decoded = decode_batch(row[None], mask[None])
    assert decoded.valid.tolist() == [[True, True]]
    assert decoded.harmless.tolist() == [[0.0, 1.0]] and decoded.helpful.tolist() == [[0.0, 0.5]]
    failed = encode_row(mask, TurnScores(harmless=[0.3, 1.0], helpful=[0.2, 0.5], failed=[True, False]))
    assert decode_batch(failed[None], mask[None]).valid.tolist() == [[False, True]]
