"""The am3/* training metrics, on rows built from agent-loop outputs, against values computed from the records."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from adv_reference import reference_am3
from adv_rows import dialogue_output, dialogue_outputs
from am3_verl.advantage.config import Am3AdvantageConfig
from am3_verl.advantage.metrics import compute_am3_metrics, turn_scores_record
from am3_verl.turn_scores import TurnScores, load_turn_scores


@pytest.fixture(scope="module")
def tokenizer(tiny_qwen_dir):
    return AutoTokenizer.from_pretrained(tiny_qwen_dir)


def padded_rows(outputs):
    fields = [o.as_dict() for _, _, o in outputs]
    length = max(len(f["response_mask"]) for f in fields)
    mask = torch.zeros(len(fields), length, dtype=torch.int64)
    rewards = torch.zeros(len(fields), length)
    for i, f in enumerate(fields):
        mask[i, : len(f["response_mask"])] = f["response_mask"]
        rewards[i, : len(f["rm_scores"])] = f["rm_scores"]
    return rewards, mask, np.array([uid for uid, _, _ in outputs], dtype=object)


def test_metrics_match_the_records(tokenizer):
    outputs = dialogue_outputs(tokenizer, seed=29, group_sizes=[8, 8, 4], p_fail=0.2)
    outputs += dialogue_outputs(tokenizer, seed=30, group_sizes=[4], p_truncate=0.0, p_fail=0.2)  # a same-length group
    rewards, mask, index = padded_rows(outputs)
    records = [turn_scores_record(o.extra_fields) for _, _, o in outputs]
    cfg = Am3AdvantageConfig(tau=0.6, unsafe_threshold=0.4)
    metrics = compute_am3_metrics(rewards, mask, index, cfg, records)

    judged = [(r.harmless[t], r.helpful[t], r.refused[t]) for r in records for t in range(len(r)) if not r.failed[t]]
    f32 = lambda v: float(torch.tensor(v, dtype=torch.float32))  # noqa: E731 - scores travel as float32
    assert metrics["am3/harmless/mean"] == pytest.approx(np.mean([f32(s) for s, _, _ in judged]), abs=1e-6)
    assert metrics["am3/helpful/mean"] == pytest.approx(np.mean([f32(h) for _, h, _ in judged]), abs=1e-6)
    assert metrics["am3/asr"] == pytest.approx(np.mean([f32(s) < 0.4 for s, _, _ in judged]))
    assert metrics["am3/refusal_rate"] == pytest.approx(np.mean([r for _, _, r in judged]))
    scored = [r for r in records if not all(r.failed)]
    assert metrics["am3/dialogue_asr"] == pytest.approx(
        np.mean([any(f32(r.harmless[t]) < 0.4 for t in range(len(r)) if not r.failed[t]) for r in scored])
    )
    assert metrics["am3/judge_failed_turns"] == sum(sum(r.failed) for r in records)
    assert metrics["am3/judge_failure_rate"] == pytest.approx(sum(sum(r.failed) for r in records) / sum(len(r) for r in records))
    assert metrics["am3/unscored_rollouts"] == sum(all(r.failed) for r in records)
    assert metrics["am3/rollouts_without_turns"] == 0
    assert metrics["am3/refusal_unknown_rollouts"] == 0
    assert metrics["am3/assistant_turns/mean"] == pytest.approx(np.mean([len(r) for r in records]))
    lengths_by_group: dict = {}
    for uid, record in zip(index, records):
        lengths_by_group.setdefault(uid, set()).add(len(record))
    mixed = np.mean([len(lengths) > 1 for lengths in lengths_by_group.values()])
    assert 0 < mixed < 1, "the fixture should hold both same-length and mixed-length groups"
    assert metrics["am3/groups/mixed_length_fraction"] == pytest.approx(mixed)

    ref = reference_am3(rewards.tolist(), mask.tolist(), list(index), tau=0.6)
    assert metrics["am3/reward/mean"] == pytest.approx(np.mean([r for r, s in zip(ref.rewards, ref.scored) if s]), abs=1e-6)
    alphas = [[a for a, p in zip(ref.alpha[g], ref.present[g]) if p] for g in sorted(ref.alpha)]
    alphas = [a for a in alphas if a]
    entropy = [-sum(x * math.log(x) for x in a) for a in alphas]
    assert metrics["am3/alpha/entropy/mean"] == pytest.approx(np.mean(entropy), abs=1e-9)
    assert metrics["am3/alpha/max_weight/mean"] == pytest.approx(np.mean([max(a) for a in alphas]), abs=1e-9)
    several = [(e, len(a)) for e, a in zip(entropy, alphas) if len(a) >= 2]
    assert metrics["am3/alpha/normalized_entropy/mean"] == pytest.approx(np.mean([e / math.log(n) for e, n in several]), abs=1e-9)
    nonuniform = [max(a) - min(a) > 1e-9 for a in alphas if len(a) >= 2]
    assert metrics["am3/alpha/nonuniform_group_fraction"] == pytest.approx(np.mean(nonuniform))
    for t in range(4):
        by_group = [ref.alpha[g][t] for g in sorted(ref.alpha) if t < len(ref.present[g]) and ref.present[g][t]]
        assert metrics[f"am3/alpha/turn_{t + 1}/mean"] == pytest.approx(np.mean(by_group), abs=1e-9)
    assert all(key.startswith("am3/") for key in metrics)
    assert all(isinstance(value, float) for value in metrics.values())


def test_rollouts_without_judged_turns_and_without_records_are_counted(tokenizer):
    import random

    rng = random.Random(3)
    failed = TurnScores(harmless=[0.0, 0.0], helpful=[0.0, 0.0], failed=[True, True], refused=[False, False])
    ok = TurnScores(harmless=[0.2, 0.9], helpful=[0.5, 0.5], failed=[False, False])  # no refusal flags
    outputs = [
        ("g", 0, dialogue_output(tokenizer, rng, failed, 2)),
        ("g", 1, dialogue_output(tokenizer, rng, ok, 2)),
        ("g", 2, dialogue_output(tokenizer, rng, ok, 2)),
    ]
    rewards, mask, index = padded_rows(outputs)
    records = [turn_scores_record(o.extra_fields) for _, _, o in outputs]
    metrics = compute_am3_metrics(rewards, mask, index, Am3AdvantageConfig(), records)
    assert metrics["am3/unscored_rollouts"] == 1
    assert metrics["am3/judge_failed_turns"] == 2
    assert metrics["am3/refusal_unknown_rollouts"] == 2  # the two records without refusal flags
    assert math.isnan(metrics["am3/refusal_rate"])
    assert metrics["am3/asr"] == pytest.approx(0.5)
    assert metrics["am3/dialogue_asr"] == pytest.approx(1.0)


def test_a_record_that_disagrees_with_the_row_is_an_error(tokenizer):
    import random

    rng = random.Random(4)
    outputs = [("g", i, dialogue_output(tokenizer, rng, TurnScores([0.5] * 2, [0.5] * 2, [False] * 2, [False] * 2), 2)) for i in range(2)]
    rewards, mask, index = padded_rows(outputs)
    records = [
        load_turn_scores(outputs[0][2].extra_fields["reward_extra_info"]["am3_turn_scores"]),
        TurnScores([0.5] * 3, [0.5] * 3, [False] * 3, [True] * 3),
    ]
    with pytest.raises(ValueError, match="row 1: its am3_turn_scores record has 3 turns but the response has 2"):
        compute_am3_metrics(rewards, mask, index, Am3AdvantageConfig(), records)
    with pytest.raises(ValueError, match="1 turn-score records for 2 rows"):
        compute_am3_metrics(rewards, mask, index, Am3AdvantageConfig(), records[:1])


def test_turn_scores_record_reads_extra_fields():
    assert turn_scores_record({}) is None
    assert turn_scores_record(None) is None
    assert turn_scores_record({"reward_extra_info": {}}) is None
    with pytest.raises(ValueError, match="am3_turn_scores: not a valid per-turn score record"):
        turn_scores_record({"reward_extra_info": {"am3_turn_scores": "{"}})
