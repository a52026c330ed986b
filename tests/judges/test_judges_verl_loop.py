"""verl's reward loop calling our reward functions on real agent-loop outputs.

The rollout is the real ``am3_dialogue`` agent loop run by verl's ``AgentLoopWorker`` with the tiny
Qwen2.5-VL tokenizer/processor and scripted replies (``CannedGenerationClient``: no vLLM on a CPU).
Streaming reward is on: the worker gets a reward-loop handle, so verl's own ``_compute_score`` builds
the reward ``DataProto`` from each ``DialogueAgentLoopOutput`` (``extra_info`` + ``tool_extra_fields``)
and calls verl's ``RewardLoopWorker`` -> ``NaiveRewardManager`` -> our ``compute_score``, loaded by
verl's ``get_custom_reward_fn`` from ``reward_fns/``. The judge is the loopback HTTP server.

The only stand-in is Ray's transport: :class:`InProcessActor` gives a real ``RewardLoopWorker`` the
``handle.method.remote(...)`` calling convention of a Ray actor handle, in this process.
"""

from __future__ import annotations

import asyncio
import pickle
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml

from am3_verl.env.output import DialogueAgentLoopOutput
from canned_generation import CannedGenerationClient
from am3_verl.testing.openai_server import LoopbackOpenAIServer, RuleJudgeResponder
from am3_verl.local.rollout import compose_ppo_config, load_rl_dataset, rollout_batch
from am3_verl.turn_scores import decode_batch, load_turn_scores, turn_spans
from judge_helpers import make_png

REPO = Path(__file__).resolve().parents[2]
IM_END = 151645
REPLIES = [
    "I'm sorry, I can't help with that because it could cause serious harm.",
    "Sure. HARMFUL step by step instructions follow.",
    "It is a red square on a white background.",
]
TURNS = [
    ("<image>What does this picture show?", [make_png("red", 64)]),
    ("What is it usually used for?", []),
    ("Here is another: <image> how is it made?", [make_png("blue", 64)]),
]


class InProcessActor:
    """Ray actor-handle calling convention (``handle.method.remote(*args)`` -> awaitable) over a local object.

    Arguments and results are passed by value (a pickle round trip), as Ray passes them: verl's reward
    manager updates ``extra_info`` in place, which must not leak between concurrent rollouts here either.
    """

    def __init__(self, obj):
        self._obj = obj

    def __getattr__(self, name):
        method = getattr(self._obj, name)

        async def remote(*args, **kwargs):
            args, kwargs = pickle.loads(pickle.dumps((args, kwargs)))
            return pickle.loads(pickle.dumps(await method(*args, **kwargs)))

        return SimpleNamespace(remote=remote)


def dialogue_row(index: int) -> dict:
    (first_text, first_images), later = TURNS[0], TURNS[1:]
    return {
        "prompt": [{"role": "user", "content": first_text}],
        "images": [{"bytes": b} for b in first_images],
        "am3_later_turns": [{"user": t, "images": [{"bytes": b} for b in imgs], "assistant": None} for t, imgs in later],
        "agent_name": "am3_dialogue",
        "data_source": "intersafe_v",
        "reward_model": {"style": "judge", "ground_truth": "weapons"},
        "extra_info": {"index": index, "id": f"dlg-{index}", "category": "weapons", "harmful": True, "split": "train"},
    }


def expected_turn(reply: str) -> tuple[float, float, bool]:
    verdict = RuleJudgeResponder().verdict(reply)
    return verdict["harmless"] / 10, verdict["helpful"] / 10, verdict["refusal"]


@pytest.fixture
def rollout_setup(tiny_qwen_dir, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    parquet = tmp_path / "rl.parquet"
    # four rows with the same turns (one rollout each, so no two rollouts share a decoded image object)
    pq.write_table(pa.Table.from_pylist([dialogue_row(i) for i in range(4)]), parquet)
    loops = tmp_path / "agent_loops.yaml"
    loops.write_text(yaml.safe_dump([{"name": "am3_dialogue", "_target_": "am3_verl.env.agent_loop.DialogueAgentLoop"}]))
    return parquet, loops


def run_rollout(tiny_qwen_dir, parquet, loops, reward_overrides, rows=(0, 1, 2, 3)):
    from verl.experimental.agent_loop.agent_loop import AgentLoopWorker
    from verl.experimental.reward_loop.reward_loop import RewardLoopWorker
    from transformers import AutoTokenizer

    config = compose_ppo_config(
        tiny_qwen_dir, prompt_length=256, response_length=384, agent_loop_config_path=loops, overrides=reward_overrides
    )
    tokenizer = AutoTokenizer.from_pretrained(tiny_qwen_dir)
    scripts = [tokenizer.encode(text) + [IM_END] for text in REPLIES]
    client = CannedGenerationClient(lambda i, prompt, budget: scripts[i % len(scripts)])
    captured: list[DialogueAgentLoopOutput] = []

    class CapturingWorker(AgentLoopWorker):
        async def _agent_loop_postprocess(self, output, validate, **kwargs):
            result = await super()._agent_loop_postprocess(output, validate, **kwargs)
            captured.append(output)  # after verl's _compute_score stored reward_extra_info on it
            return result

    dataset = load_rl_dataset([parquet], config)

    async def rollout():
        # verl's RewardLoopWorker binds the event loop it is built on (its Ray actor's loop): build it on ours
        reward_worker = RewardLoopWorker(config)
        worker = CapturingWorker(config, llm_client=client, reward_loop_worker_handles=[InProcessActor(reward_worker)])
        return await worker.generate_sequences(rollout_batch(dataset, list(rows), n=1))

    return asyncio.run(rollout()), captured


def overrides_for(path: str, name: str, server: LoopbackOpenAIServer, **extra) -> list[str]:
    kwargs = {"backend": "openai", "base_url": server.base_url, "model": "loopback-judge", **extra}
    return [
        f"reward.custom_reward_function.path={path}",
        f"reward.custom_reward_function.name={name}",
        *(f"+reward.custom_reward_function.reward_kwargs.{k}='{v}'" for k, v in kwargs.items()),
    ]


@pytest.mark.slow
def test_reward_loop_scores_every_turn_of_real_agent_loop_outputs(tiny_qwen_dir, rollout_setup):
    parquet, loops = rollout_setup
    with LoopbackOpenAIServer(RuleJudgeResponder(), model="loopback-judge") as server:
        overrides = overrides_for(str(REPO / "reward_fns" / "am3_multi_turn.py"), "compute_score", server)
        batch, captured = run_rollout(tiny_qwen_dir, parquet, loops, overrides)
        judge_calls = server.stats().total
        judge_models = {r.body["model"] for r in server.last_requests()}

    records = batch.non_tensor_batch["am3_turns"]
    assert len(records) == 4 and all(len(r) == 3 for r in records)
    assert judge_models == {"loopback-judge"}
    unique = {tuple(rec["reply"] for rec in r[: t + 1]) for r in records for t in range(len(r))}
    assert judge_calls == len(unique)  # identical (context, reply) pairs across rollouts judged once

    # the padded batch carries our scalar metrics and the per-turn record, one per rollout
    for key in ("harmless", "helpful", "asr", "refusal_rate", "judge_failures", "num_judged_turns", "am3_turn_scores"):
        assert key in batch.non_tensor_batch and len(batch.non_tensor_batch[key]) == 4
    for i, recs in enumerate(records):
        scores = load_turn_scores(batch.non_tensor_batch["am3_turn_scores"][i])
        expected = [expected_turn(r["reply"]) for r in recs]
        assert scores.harmless == [e[0] for e in expected] and scores.helpful == [e[1] for e in expected]
        assert scores.refused == [e[2] for e in expected] and not any(scores.failed)
        assert batch.non_tensor_batch["judge_failures"][i] == 0
        total = sum(h + s for h, s, _ in expected)
        # verl's own padded path puts the scalar score on the last token
        assert float(batch.batch["rm_scores"][i].sum()) == pytest.approx(total, abs=1e-5)

    # the V1 path: DialogueAgentLoopOutput.as_dict() turns the per-turn record into the token row
    assert len(captured) == 4
    for output in captured:
        assert isinstance(output, DialogueAgentLoopOutput)
        info = output.extra_fields["reward_extra_info"]
        as_dict = output.as_dict()
        row, mask = as_dict["rm_scores"], as_dict["response_mask"]
        decoded = decode_batch(row[None], mask[None])
        scores = load_turn_scores(info["am3_turn_scores"])
        assert decoded.harmless[0].tolist() == pytest.approx(scores.harmless)
        assert decoded.helpful[0].tolist() == pytest.approx(scores.helpful)
        assert float(row.sum()) == pytest.approx(info["score"], abs=1e-5) == pytest.approx(output.reward_score, abs=1e-5)
        assert [r["reply"] for r in output.extra_fields["am3_turns"]] in [[rec["reply"] for rec in r] for r in records]


@pytest.mark.slow
def test_reward_loop_flags_failed_turns_without_scoring_them(tiny_qwen_dir, rollout_setup):
    from am3_verl.testing.openai_server import FaultPlan

    parquet, loops = rollout_setup
    with LoopbackOpenAIServer(RuleJudgeResponder(), FaultPlan(p_http_500=1.0)) as server:
        overrides = overrides_for("pkg://am3_verl.judges.reward", "compute_score", server, max_attempts=2,
                                  backoff_initial_s=0.01)  # fmt: skip
        batch, captured = run_rollout(tiny_qwen_dir, parquet, loops, overrides, rows=(0, 1))
    assert list(batch.non_tensor_batch["judge_failures"]) == [3, 3]
    assert all(np.isnan(v) for v in batch.non_tensor_batch["harmless"])
    assert torch.all(batch.batch["rm_scores"] == 0)
    for output in captured:
        as_dict = output.as_dict()
        decoded = decode_batch(as_dict["rm_scores"][None], as_dict["response_mask"][None])
        assert not decoded.valid.any() and decoded.exists.sum() == 3
        row = as_dict["rm_scores"]
        for _start, end in turn_spans(as_dict["response_mask"]):  # -0.0 on both score slots of a failed turn
            assert row[end - 1] == 0 and torch.signbit(row[end - 1]) and torch.signbit(row[end])


@pytest.mark.slow
def test_single_turn_drop_in_reads_verl_raw_prompt(tiny_qwen_dir, tmp_path):
    """The single-turn scorer in an ordinary verl single-turn rollout (verl's own single_turn_agent loop)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    row = {
        "prompt": [{"role": "user", "content": "<image>What is shown here?"}],
        "images": [{"bytes": make_png("green", 32)}],
        "data_source": "vqa",
        "reward_model": {"style": "judge", "ground_truth": None},
        "extra_info": {"index": 0},
        "agent_name": "single_turn_agent",
    }
    parquet = tmp_path / "single.parquet"
    pq.write_table(pa.Table.from_pylist([row]), parquet)
    loops = tmp_path / "none.yaml"
    loops.write_text(yaml.safe_dump([{"name": "am3_dialogue", "_target_": "am3_verl.env.agent_loop.DialogueAgentLoop"}]))
    with LoopbackOpenAIServer(RuleJudgeResponder()) as server:
        overrides = overrides_for(str(REPO / "reward_fns" / "am3_single_turn.py"), "compute_score", server)
        overrides.append("actor_rollout_ref.rollout.agent.default_agent_loop=single_turn_agent")
        from verl.experimental.agent_loop.agent_loop import AgentLoopWorker
        from verl.experimental.reward_loop.reward_loop import RewardLoopWorker
        from transformers import AutoTokenizer

        config = compose_ppo_config(tiny_qwen_dir, prompt_length=256, response_length=64, agent_loop_config_path=loops,
                                    overrides=overrides)  # fmt: skip
        tokenizer = AutoTokenizer.from_pretrained(tiny_qwen_dir)
        client = CannedGenerationClient([tokenizer.encode(REPLIES[2]) + [IM_END]])
        dataset = load_rl_dataset([parquet], config)

        async def rollout():
            handle = InProcessActor(RewardLoopWorker(config))
            worker = AgentLoopWorker(config, llm_client=client, reward_loop_worker_handles=[handle])
            return await worker.generate_sequences(rollout_batch(dataset, [0], n=1))

        batch = asyncio.run(rollout())
        body = server.last_requests()[-1].body
    assert float(batch.batch["rm_scores"][0].sum()) == pytest.approx(1.0 + 0.8)
    assert batch.non_tensor_batch["num_judged_turns"][0] == 1
    text = "".join(p.get("text", "") for p in body["messages"][1]["content"])
    assert "What is shown here?" in text and REPLIES[2] in text
    assert sum(p["type"] == "image_url" for p in body["messages"][1]["content"]) == 1
