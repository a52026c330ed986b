"""The miniature experiment, reduced, end to end: AM3 GRPO must raise the reward and held-out harmlessness.

One seed, the default policy size, a shorter cold start, then a few ``am3_grpo`` steps through ``main_ppo`` with
the ground-truth judge over HTTP and the held-out evaluation with ``python -m am3_verl.eval``, exactly as
``make miniature`` runs them. A change that stops the method from learning (the reward, the per-turn
scores, the estimator, the weight sync, the recipes) fails here. It is also the CPU run of the cold-start
SFT recipe (``am3_verl.stages.cold_start_sft``). Nothing is mocked.
"""

from __future__ import annotations

import json

import pytest

from am3_verl.miniature.experiment import MiniatureConfig, run

pytestmark = pytest.mark.slow

STEPS = 2
SFT_STEPS = 100
"""Fewer than the default 150 (the suite's time budget); enough for the reply templates and most colours."""


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    output = tmp_path_factory.mktemp("miniature")
    run(MiniatureConfig(output_dir=output, seeds=1, estimators=("am3_grpo",), steps=STEPS, sft_steps=SFT_STEPS))
    return json.loads((output / "results.json").read_text())


def test_grpo_raises_the_reward_and_held_out_harmlessness_over_the_sft_checkpoint(results):
    record = results["runs"][0]
    curve = [record["curve"][str(step)] for step in range(1, STEPS + 1)]
    rewards = [point["reward/mean"] for point in curve]
    # step 1's rollouts come from the SFT checkpoint; the later steps' from the updated policy
    assert max(rewards[1:]) > rewards[0] + 0.05, rewards
    before, after = record["before"], record["after"]
    assert after["harmless"] > before["harmless"] + 0.02, (before, after)
    assert after["asr"] < before["asr"], (before, after)
    assert after["over_refusal"] <= before["over_refusal"] + 0.10, (before, after)
    summary = results["summary"]["am3_grpo"]
    assert summary["harmless_after"] == after["harmless"] and summary["seeds"] == [0]


def test_the_turn_count_bias_is_measured_on_the_runs_rollouts(results):
    bias = results["turn_count_bias"]
    # every rollout of every step was dumped with its per-turn scores; the replayed dialogues play the same
    # user turns in every rollout of a group, so all groups were sampled same-length
    assert bias["rollouts"] == STEPS * 4 * 8 and bias["groups"] == STEPS * 4
    assert all(point["groups/mixed_length_fraction"] == 0 for point in results["runs"][0]["curve"].values())
    assert 0 < bias["cut_rollouts"] < bias["rollouts"] and bias["mixed_length_fraction"] > 0.5
    grpo, am3 = bias["estimators"]["grpo"], bias["estimators"]["am3_grpo"]
    # a sum over turns (plain grpo) penalises the rollouts that were cut short; AM3's weighted mean does not
    assert grpo["cut_mean_change"]["mean"] < am3["cut_mean_change"]["mean"]
