"""The am3_* V1 trainer modes: verl's real trainer class, a real TransferQueue, rows as the agent loop stores them.

Ray and TransferQueue run for real (CPU). What cannot exist here is the GPU side of ``PPOTrainer.init()``
(worker groups, rollout servers); the trainer is constructed with verl's own ``__init__`` and only the
resource-pool manager's GPU count, which ``_compute_metrics`` reads for throughput, is supplied.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import ray
import torch
import transfer_queue as tq
from tensordict import TensorDict
import verl
from hydra import compose, initialize_config_dir
from transfer_queue import KVBatchMeta
from transformers import AutoTokenizer
from verl.single_controller.ray.base import ResourcePoolManager
from verl.trainer.ppo.padding_utils import upsample_batch_to_divisible_size
from verl.trainer.ppo.v1 import PPOTrainerSync, get_trainer_cls
from verl.trainer.ppo.v1.replay_buffer import ReplayBuffer
from verl.utils.tensordict_utils import list_of_dict_to_tensordict

import am3_verl.advantage as am3_advantage
from adv_reference import reference_am3
from adv_rows import dialogue_outputs
from am3_verl.advantage.config import Am3AdvantageConfig
from am3_verl.advantage.turn_score_dump import read_turn_score_dumps
from am3_verl.advantage.metrics import compute_am3_metrics, turn_scores_record
from am3_verl.advantage.trainer_modes import TRAINER_MODES

pytestmark = pytest.mark.slow

CONFIG_DIR = os.path.join(os.path.dirname(verl.__file__), "trainer", "config")


def compose_ppo(overrides: list[str]):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        return compose(config_name="ppo_trainer", overrides=overrides)


@pytest.fixture(scope="module")
def transfer_queue():
    # TransferQueue's controller and its two storage units each reserve one Ray CPU.
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        tq.init()
        yield
        tq.close()
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def tokenizer(tiny_qwen_dir):
    return AutoTokenizer.from_pretrained(tiny_qwen_dir)


def put_rollouts(outputs, partition_id: str = "train") -> KVBatchMeta:
    """Store each session's output as ``AgentLoopWorkerTQ._agent_loop_postprocess`` does (one put per session)."""
    keys, tags = [], []
    for uid, session_id, output in outputs:
        field = output.as_dict()
        field.update({"uid": uid, "session_id": session_id, "global_steps": 1})
        field.pop("multi_modal_data", None)
        field["loss_mask"] = field["response_mask"]
        input_ids = torch.cat([field["prompts"], field["responses"]])
        field["input_ids"] = input_ids
        field["position_ids"] = torch.arange(len(input_ids))
        key = f"{uid}_{session_id}_0"
        tag = {
            "status": "success",
            "prompt_len": len(field["prompts"]),
            "response_len": len(field["responses"]),
            "seq_len": len(input_ids),
            "global_steps": 1,
            "min_global_steps": 0,
            "max_global_steps": 0,
        }
        tq.kv_batch_put(keys=[key], partition_id=partition_id, fields=list_of_dict_to_tensordict([field]), tags=[tag])
        keys.append(key)
        tags.append(tag)
    return KVBatchMeta(partition_id=partition_id, keys=keys, tags=tags)


def test_register_is_idempotent_and_modes_map_to_verl_classes():
    am3_advantage.register()
    am3_advantage.register()
    assert am3_advantage.missing_registrations() == []
    for name, cls in TRAINER_MODES.items():
        assert get_trainer_cls(name) is cls
    assert issubclass(get_trainer_cls("am3_sync"), PPOTrainerSync)


def test_am3_sync_step_advantages_and_metrics(transfer_queue, tokenizer, monkeypatch, tmp_path):
    from am3_verl.advantage import variants

    am3_advantage.register()
    computations = []  # every AM3 computation of the step: the estimator's, handed over to the metrics
    paper = variants.VARIANT_FUNCTIONS["paper"]
    monkeypatch.setitem(variants.VARIANT_FUNCTIONS, "paper", lambda *a: computations.append(1) or paper(*a))
    config = compose_ppo(
        [
            "algorithm.adv_estimator=am3_grpo",
            "+algorithm.am3.tau=0.6",
            "+algorithm.am3.temperature=0.5",
            "trainer.v1.trainer_mode=am3_sync",
            "actor_rollout_ref.rollout.n=8",
            f"trainer.rollout_data_dir={tmp_path}",
        ]
    )
    trainer = get_trainer_cls(config.trainer.v1.trainer_mode)(config=config)
    # verl's own sync machinery, not an async fallback for an unknown mode name.
    assert trainer.trainer_mode == "sync" and trainer.config.trainer.v1.trainer_mode == "sync"
    assert type(trainer.replay_buffer) is ReplayBuffer
    assert config.trainer.v1.trainer_mode == "am3_sync"  # the caller's config is left alone
    trainer.resource_pool_manager = ResourcePoolManager(resource_pool_spec={"global_pool": [8]}, mapping={})

    outputs = dialogue_outputs(tokenizer, seed=41, group_sizes=[8, 8, 5], p_fail=0.2)
    batch = put_rollouts(outputs)
    # verl pads the step to a multiple of the data-parallel size with synthetic no-op rows.
    batch = upsample_batch_to_divisible_size(batch, 8, tokenizer.eos_token_id)
    assert len(batch) == 24 and sum(tag.get("is_padding", False) for tag in batch.tags) == 3
    # What the actor's old_log_prob step writes next (here: no drift from the rollout policy).
    logprobs = tq.kv_batch_get(keys=batch.keys, partition_id="train", select_fields=["rollout_log_probs"])
    tq.kv_batch_put(
        keys=batch.keys, partition_id="train", fields=TensorDict({"old_log_probs": logprobs["rollout_log_probs"]}, batch_size=len(batch))
    )

    metrics: dict = {}
    batch = trainer._compute_advantage(batch, metrics=metrics)

    stored = tq.kv_batch_get(keys=batch.keys, partition_id="train", select_fields=["advantages", "response_mask", "rm_scores", "uid"])
    uid = stored.pop("uid").tolist()
    rows = stored.to_padded_tensor()
    ref = reference_am3(rows["rm_scores"].tolist(), rows["response_mask"].tolist(), uid, tau=0.6, temperature=0.5)
    torch.testing.assert_close(rows["advantages"], torch.tensor(ref.advantages, dtype=torch.float32), rtol=1e-4, atol=1e-4)
    assert bool((rows["advantages"][21:] == 0).all())  # the padding rows
    assert bool(rows["advantages"][:21].abs().sum() > 0)

    timing_raw = {"step": 2.0, "gen": 1.0, "adv": 0.1, "old_log_prob": 0.2, "update_actor": 0.5}
    trainer._compute_metrics(batch, metrics, timing_raw, global_steps=1, epoch=0)
    assert "critic/score/mean" in metrics  # verl's own step metrics are still there
    assert len(computations) == 1  # the metrics reused the estimator's computation

    records = [turn_scores_record(o.extra_fields) for _, _, o in outputs]
    real = np.array(uid[:21], dtype=object)
    want = compute_am3_metrics(
        rows["rm_scores"][:21], rows["response_mask"][:21], real, Am3AdvantageConfig(tau=0.6, temperature=0.5), records
    )
    # the rollout-vs-actor log-prob gap (weight-sync health): zero here, old_log_probs are the rollout's
    want.update({"am3/sync/logprob_abs_diff/max": 0.0, "am3/sync/logprob_abs_diff/mean": 0.0})
    got = {k: v for k, v in metrics.items() if k.startswith("am3/")}
    assert set(got) == set(want) and len(got) >= 17
    for key, value in want.items():
        assert got[key] == pytest.approx(value, nan_ok=True), key

    # trainer.rollout_data_dir set: every real row's per-turn scores, as the estimator read them
    dumped = read_turn_score_dumps(tmp_path)
    assert [d.uid for d in dumped] == uid[:21] and {d.step for d in dumped} == {1}
    f32 = lambda values: [float(torch.tensor(v, dtype=torch.float32)) for v in values]  # noqa: E731
    for rollout, record in zip(dumped, records):
        assert rollout.failed == tuple(record.failed)
        ok = [not f for f in record.failed]
        assert [v for v, k in zip(rollout.harmless, ok) if k] == pytest.approx([v for v, k in zip(f32(record.harmless), ok) if k], abs=1e-6)
        assert [v for v, k in zip(rollout.helpful, ok) if k] == pytest.approx([v for v, k in zip(f32(record.helpful), ok) if k], abs=1e-6)
    assert got["am3/rollouts_without_turns"] == 0  # padding rows are not counted
    tq.kv_clear(keys=batch.keys, partition_id="train")
