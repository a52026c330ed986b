"""am3_grpo and every variant through verl's own compute_advantage, on batches built from agent-loop outputs.

Outputs are :class:`DialogueAgentLoopOutput` objects with real Qwen tokens (adv_rows.dialogue_output);
``as_dict()`` places the per-turn scores. Batches are assembled as verl assembles them:

* V1: ``AgentLoopWorkerTQ._agent_loop_postprocess`` fields -> ``list_of_dict_to_tensordict`` ->
  ``to_padded_tensor`` -> ``DataProto`` -> ``compute_advantage_for_multi_trajectories`` (the steps of
  ``PPOTrainer._compute_advantage`` minus the TransferQueue, which test_advantage_trainer_modes.py covers);
* legacy: left-padded prompts, right-padded responses (``AgentLoopWorker._postprocess``), then
  ``verl.trainer.ppo.ray_trainer.compute_advantage``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from transformers import AutoTokenizer
from verl.protocol import DataProto
from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage
from verl.trainer.ppo.ray_trainer import compute_advantage
from verl.trainer.ppo.v1.utils import compute_advantage_for_multi_trajectories
from verl.utils.tensordict_utils import list_of_dict_to_tensordict
from verl.workers.utils.padding import response_to_nested

import am3_verl.advantage as am3_advantage
from adv_reference import reference_am3
from adv_rows import dialogue_outputs
from am3_verl.advantage.config import VARIANTS

SETTINGS = {"tau": 0.6, "lambda_": 1.5, "beta": 0.8, "temperature": 0.5, "discount": 0.9}


@pytest.fixture(scope="module", autouse=True)
def registered():
    am3_advantage.register()


@pytest.fixture(scope="module")
def tokenizer(tiny_qwen_dir):
    return AutoTokenizer.from_pretrained(tiny_qwen_dir)


@pytest.fixture(scope="module")
def outputs(tokenizer):
    # Groups of 8 and 3, and one rollout alone; truncated dialogues and failed judges included.
    return dialogue_outputs(tokenizer, seed=13, group_sizes=[8, 3, 1])


def algorithm(variant: str, norm: bool = True, **extra):
    return OmegaConf.create(
        {
            "adv_estimator": "am3_grpo",
            "norm_adv_by_std_in_grpo": norm,
            "use_kl_in_reward": False,
            "gamma": 1.0,
            "lam": 1.0,
            "am3": {"variant": variant, **SETTINGS},
            **extra,
        }
    )


def v1_fields(outputs):
    """Per-row fields and keys as ``AgentLoopWorkerTQ._agent_loop_postprocess`` writes them."""
    keys, fields = [], []
    for uid, session_id, output in outputs:
        field = output.as_dict()
        field.update({"uid": uid, "session_id": session_id, "global_steps": 1})
        field.pop("multi_modal_data", None)
        field["loss_mask"] = field["response_mask"]
        keys.append(f"{uid}_{session_id}_0")
        fields.append(field)
    return keys, fields


def v1_batch(outputs) -> tuple[DataProto, list[str], torch.Tensor]:
    """The DataProto ``PPOTrainer._compute_advantage`` builds from the stored rows."""
    keys, fields = v1_fields(outputs)
    stored = list_of_dict_to_tensordict(fields)
    data = stored.select("uid", "response_mask", "rm_scores", "rollout_log_probs")
    response_mask = data["response_mask"]
    proto = DataProto(batch=data.to_padded_tensor())
    proto.batch["token_level_scores"] = proto.batch["rm_scores"]
    proto.non_tensor_batch["uid"] = np.array(proto.batch.pop("uid").tolist(), dtype=object)
    proto.batch["token_level_rewards"] = proto.batch["token_level_scores"]
    return proto, keys, response_mask


def legacy_batch(outputs, tokenizer, response_length: int) -> DataProto:
    """A DataProto shaped as the legacy trainer's agent-loop batch, with rm_scores from ``as_dict()``."""
    prompt_length = max(len(o.prompt_ids) for _, _, o in outputs)
    pad = tokenizer.pad_token_id
    prompts, responses, masks, attention, scores = [], [], [], [], []
    for _, _, output in outputs:
        field = output.as_dict()
        p, r = field["prompts"], field["responses"]
        prompts.append(torch.cat([torch.full((prompt_length - len(p),), pad), p]))
        responses.append(torch.cat([r, torch.full((response_length - len(r),), pad)]))
        masks.append(torch.cat([field["response_mask"], torch.zeros(response_length - len(r), dtype=torch.int64)]))
        scores.append(torch.cat([field["rm_scores"], torch.zeros(response_length - len(r))]))
        attention.append(
            torch.cat(
                [
                    torch.zeros(prompt_length - len(p), dtype=torch.int64),
                    torch.ones(len(p) + len(r), dtype=torch.int64),
                    torch.zeros(response_length - len(r), dtype=torch.int64),
                ]
            )
        )
    batch = {
        "prompts": torch.stack(prompts),
        "responses": torch.stack(responses),
        "response_mask": torch.stack(masks),
        "attention_mask": torch.stack(attention),
        "rm_scores": torch.stack(scores),
    }
    batch["input_ids"] = torch.cat([batch["prompts"], batch["responses"]], dim=1)
    non_tensor = {
        "uid": np.array([uid for uid, _, _ in outputs], dtype=object),
        "am3_turn_scores": np.array([o.extra_fields["reward_extra_info"]["am3_turn_scores"] for _, _, o in outputs]),
    }
    data = DataProto.from_dict(tensors=batch, non_tensors=non_tensor)
    data.batch["token_level_scores"] = data.batch["rm_scores"]
    data.batch["token_level_rewards"] = data.batch["token_level_scores"]
    return data


def expected(data: DataProto, variant: str, norm: bool = True) -> torch.Tensor:
    ref = reference_am3(
        data.batch["token_level_rewards"].tolist(),
        data.batch["response_mask"].tolist(),
        list(data.non_tensor_batch["uid"]),
        variant=variant,
        norm_by_std=norm,
        **SETTINGS,
    )
    return torch.tensor(ref.advantages, dtype=torch.float32)


def test_outputs_carry_every_turn_score_in_rm_scores(outputs):
    from am3_verl.turn_scores import decode_batch, load_turn_scores

    for _, _, output in outputs:
        field = output.as_dict()
        record = load_turn_scores(output.extra_fields["reward_extra_info"]["am3_turn_scores"])
        decoded = decode_batch(field["rm_scores"].unsqueeze(0), field["response_mask"].unsqueeze(0))
        assert int(decoded.num_turns[0]) == len(record)
        assert decoded.valid[0].tolist() == [not f for f in record.failed]
        for t, failed in enumerate(record.failed):
            if not failed:
                assert float(decoded.harmless[0, t]) == pytest.approx(record.harmless[t], abs=1e-7)
                assert float(decoded.helpful[0, t]) == pytest.approx(record.helpful[t], abs=1e-7)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("norm", [True, False])
def test_v1_path(outputs, variant, norm):
    data, keys, response_mask = v1_batch(outputs)
    want = expected(data, variant, norm)
    config = algorithm(variant, norm)
    data = compute_advantage_for_multi_trajectories(
        data,
        batch_keys=keys,
        adv_estimator=config.adv_estimator,
        gamma=config.gamma,
        lam=config.lam,
        num_repeat=8,
        norm_adv_by_std_in_grpo=config.norm_adv_by_std_in_grpo,
        config=config,
    )
    torch.testing.assert_close(data.batch["advantages"], want, rtol=1e-4, atol=1e-4)
    assert torch.equal(data.batch["returns"], data.batch["advantages"])
    nested = response_to_nested(data.batch["advantages"], response_mask)  # what V1 writes back
    assert nested.offsets().diff().tolist() == response_mask.offsets().diff().tolist()
    assert bool(data.batch["advantages"].abs().sum() > 0)


@pytest.mark.parametrize("variant", VARIANTS)
def test_legacy_path(outputs, tokenizer, variant):
    response_length = max(len(o.response_ids) for _, _, o in outputs) + 7
    data = legacy_batch(outputs, tokenizer, response_length)
    want = expected(data, variant)
    config = algorithm(variant)
    data = compute_advantage(data, adv_estimator=config.adv_estimator, num_repeat=8, config=config)
    torch.testing.assert_close(data.batch["advantages"], want, rtol=1e-4, atol=1e-4)


def test_plain_grpo_on_the_same_v1_batch_uses_the_uniform_weight_sum(outputs):
    data, keys, _ = v1_batch(outputs)
    totals = data.batch["token_level_rewards"].sum(dim=-1)
    from am3_verl.turn_scores import load_turn_scores

    for row, (_, _, output) in enumerate(outputs):
        record = load_turn_scores(output.extra_fields["reward_extra_info"]["am3_turn_scores"])
        want = sum(s + h for s, h, f in zip(record.harmless, record.helpful, record.failed) if not f)
        assert float(totals[row]) == pytest.approx(want, abs=1e-5)
    index = data.non_tensor_batch["uid"]
    grpo_direct, _ = compute_grpo_outcome_advantage(data.batch["token_level_rewards"], data.batch["response_mask"], index)
    data = compute_advantage_for_multi_trajectories(data, batch_keys=keys, adv_estimator="grpo", num_repeat=8, config=algorithm("paper"))
    torch.testing.assert_close(data.batch["advantages"], grpo_direct)


def test_decoupled_equals_verls_gdpo_on_the_two_weighted_objectives(outputs, tokenizer):
    # verl's gdpo, fed R_s = sum alpha*s and R_h = sum alpha*h per rollout, weights (1, beta), must give the
    # decoupled variant. Every rollout scored and groups of >= 2 (verl keeps a singleton's raw reward).
    kept = [o for o in outputs if o[0] != "uid13x2"]
    response_length = max(len(o.response_ids) for _, _, o in kept) + 3
    data = legacy_batch(kept, tokenizer, response_length)
    computation = am3_advantage.estimator.compute_am3(
        data.batch["token_level_rewards"],
        data.batch["response_mask"],
        data.non_tensor_batch["uid"],
        am3_advantage.Am3AdvantageConfig(variant="decoupled", **SETTINGS),
    )
    assert bool(computation.turns.scored.all())
    weights = computation.turns.weights
    data.non_tensor_batch["am3_rs"] = (weights * computation.turns.harmless).sum(dim=1).numpy()
    data.non_tensor_batch["am3_rh"] = (weights * computation.turns.helpful).sum(dim=1).numpy()
    ours = compute_advantage(data, adv_estimator="am3_grpo", config=algorithm("decoupled")).batch["advantages"].clone()
    gdpo_config = algorithm("decoupled", gdpo_reward_keys=["am3_rs", "am3_rh"], gdpo_reward_weights=[1.0, SETTINGS["beta"]])
    theirs = compute_advantage(data, adv_estimator="gdpo", config=gdpo_config).batch["advantages"]
    torch.testing.assert_close(ours, theirs, rtol=1e-3, atol=1e-4)


def test_rows_built_by_the_legacy_agent_loop_manager_are_rejected(outputs, tokenizer):
    # verl's legacy AgentLoopWorker._postprocess ignores as_dict(): it puts the scalar reward_score on the
    # last response token. am3_grpo must not silently train on that (docs/advantage.md, V1 only).
    response_length = max(len(o.response_ids) for _, _, o in outputs) + 4
    data = legacy_batch(outputs, tokenizer, response_length)
    prompt_length = data.batch["prompts"].size(1)
    last = data.batch["attention_mask"][:, prompt_length:].sum(dim=1) - 1
    rm_scores = torch.zeros_like(data.batch["response_mask"], dtype=torch.float32)
    rm_scores[torch.arange(len(outputs)), last] = torch.tensor([o.reward_score for _, _, o in outputs])
    data.batch["token_level_rewards"] = rm_scores
    with pytest.raises(ValueError, match="helpful score .* is outside \\[0, 1\\]"):
        compute_advantage(data, adv_estimator="am3_grpo", config=algorithm("paper"))


def test_the_step_metrics_reuse_the_estimators_computation(outputs, monkeypatch):
    """One AM3 computation per step: verl's compute_advantage runs the estimator, the metrics take its result."""
    from am3_verl.advantage import variants
    from am3_verl.advantage.config import Am3AdvantageConfig
    from am3_verl.advantage.estimator import take_last_computation
    from am3_verl.advantage.metrics import am3_metrics, compute_am3_metrics

    calls = []
    paper = variants.VARIANT_FUNCTIONS["paper"]
    monkeypatch.setitem(variants.VARIANT_FUNCTIONS, "paper", lambda *a: calls.append(1) or paper(*a))
    data, keys, _ = v1_batch(outputs)
    rewards, mask = data.batch["token_level_rewards"].clone(), data.batch["response_mask"].clone()
    uid = list(data.non_tensor_batch["uid"])
    config = algorithm("paper")
    take_last_computation()  # nothing left over from another test
    compute_advantage_for_multi_trajectories(
        data,
        batch_keys=keys,
        adv_estimator=config.adv_estimator,
        num_repeat=8,
        config=config,
    )
    computation = take_last_computation()
    assert take_last_computation() is None  # handed over once
    cfg = Am3AdvantageConfig(**SETTINGS)
    metrics = am3_metrics(computation, cfg)
    assert len(calls) == 1 and computation.index == uid
    # the same figures as computing from the rows (which costs a second computation)
    want = compute_am3_metrics(rewards, mask, np.array(uid, dtype=object), cfg)
    assert len(calls) == 2 and set(metrics) == set(want)
    for key, value in want.items():
        assert metrics[key] == pytest.approx(value, nan_ok=True), key
