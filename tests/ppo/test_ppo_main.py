"""``python -m verl.trainer.main_ppo`` trains on the CPU with the AM3 recipe (the tiny CPU recipe).

Real parts throughout: verl's V1 sync trainer and FSDP2 engine (am3-verl's CPU platform), the ``hf``
rollout backend with verl's naive weight sync, the ``am3_dialogue`` agent loop replaying dialogues
whose later turns carry images, the multi-turn reward function with the ``openai`` judge backend
against a loopback OpenAI-compatible judge on 127.0.0.1, ``am3_grpo``, the ``am3_sync`` metrics, KL
loss against the reference model, validation and checkpoints, verl's TensorBoard tracker. Nothing is mocked (there is no vLLM here:
the ``hf`` backend is the product's CPU rollout backend, not a stand-in).
"""

import json
import shutil

import pandas as pd
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from am3_verl.training.weight_sync import BYPASS_KL
from ppo_helpers import AM3_STEP_KEYS, HF_BYPASS_KL_TOLERANCE, HF_SYNC_TOLERANCE, REPO, run_tiny_recipe

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def am3_run(tmp_path_factory, rl_data_dir, tiny_qwen_dir, judge_env, loopback_judge):
    workdir = tmp_path_factory.mktemp("am3-run")
    before = loopback_judge.stats().served
    run = run_tiny_recipe(
        workdir, rl_data_dir, tiny_qwen_dir,
        "trainer.total_training_steps=2", "trainer.save_freq=1", "trainer.test_freq=2",
        f"trainer.rollout_data_dir={workdir / 'rollouts'}",
        env={**judge_env, "AM3_LOGGER": "console,file,tensorboard", "TENSORBOARD_DIR": str(workdir / "tensorboard")},
    )  # fmt: skip
    run.judge_requests = loopback_judge.stats().served - before
    return run.check()


def test_the_sample_replays_later_turn_images(rl_data_dir):
    rows = pd.read_parquet(rl_data_dir / "rl_train.parquet")
    later_images = sum(len(turn["images"]) for turns in rows["am3_later_turns"] for turn in turns)
    assert later_images > 0


def test_am3_grpo_trains_two_steps_through_main_ppo(am3_run):
    assert sorted(am3_run.metrics) == [1, 2]
    for step in (1, 2):
        metrics = am3_run.metrics[step]
        assert AM3_STEP_KEYS <= set(metrics), AM3_STEP_KEYS - set(metrics)
        assert metrics["am3/judge_failure_rate"] == 0.0
        assert metrics["am3/assistant_turns/mean"] > 1  # whole dialogues, several judged turns each
        assert metrics["critic/advantages/max"] > 0 > metrics["critic/advantages/min"]
    assert am3_run.judge_requests >= am3_run.metrics[1]["am3/assistant_turns/mean"] * 8  # every turn judged over HTTP
    # KL loss against the reference: zero while the actor equals the reference, non-zero after an update.
    assert am3_run.metrics[1]["actor/kl_loss"] == 0.0
    assert am3_run.metrics[2]["actor/kl_loss"] > 0.0
    assert "val-aux/intersafe_v/harmless/mean@1" in am3_run.metrics[2]  # one validation pass
    for step in (1, 2):
        assert (am3_run.checkpoints / f"global_step_{step}" / "actor" / "huggingface" / "config.json").is_file()
    assert (am3_run.checkpoints / "latest_checkpointed_iteration.txt").read_text().strip() == "2"


def test_rollout_weights_follow_the_actor_every_step(am3_run):
    for step in (1, 2):
        assert am3_run.metrics[step]["am3/sync/logprob_abs_diff/max"] < HF_SYNC_TOLERANCE


def test_resume_continues_from_the_saved_step_and_the_sync_check_fails_without_sync(
    tmp_path, am3_run, rl_data_dir, tiny_qwen_dir, judge_env
):  # fmt: skip
    """Resume from the uninterrupted run's step-1 checkpoint with ``trainer.resume_mode=auto``, through the
    ``hf_sync_once`` backend (tests/ppo/sync_once_hf.py), which delivers only the first weight update.

    Step 2 trains on exactly the uninterrupted run's step-2 prompts (dataloader position restored), with the
    restored weights synced (the gap within the tolerance), and its KL to the reference - zero unless the
    step-1 weights were restored - within a factor of 3 of the uninterrupted run's (sampling differs).
    Step 3 is the negative control: the rollout keeps the step-1 weights while the actor has moved, and
    the sync check sees it. The run uses verl's bypass mode (old log-probs are the rollout's), so the check
    is the one bypass runs such as the miniature rely on: ``am3/sync/bypass_kl``, read from the update.
    """
    checkpoints = tmp_path / "checkpoints"
    shutil.copytree(am3_run.checkpoints / "global_step_1", checkpoints / "global_step_1")
    (checkpoints / "latest_checkpointed_iteration.txt").write_text("1")
    env = {**judge_env, "VERL_USE_EXTERNAL_MODULES": "sync_once_hf", "PYTHONPATH": str(REPO / "tests" / "ppo")}
    run = run_tiny_recipe(
        tmp_path, rl_data_dir, tiny_qwen_dir, "actor_rollout_ref.rollout.name=hf_sync_once",
        "trainer.total_training_steps=3", "trainer.resume_mode=auto", "trainer.save_freq=1", "trainer.test_freq=-1",
        "algorithm.rollout_correction.bypass_mode=True",
        f"trainer.rollout_data_dir={tmp_path / 'rollouts'}", env=env, checkpoints=checkpoints,
    ).check()  # fmt: skip
    assert sorted(run.metrics) == [2, 3]

    def step_prompts(rollouts):
        return sorted(json.loads(line)["input"] for line in (rollouts / "2.jsonl").read_text().splitlines())

    assert step_prompts(tmp_path / "rollouts") == step_prompts(am3_run.checkpoints.parent / "rollouts")
    resumed, uninterrupted = run.metrics[2]["actor/kl_loss"], am3_run.metrics[2]["actor/kl_loss"]
    assert resumed > 0 and uninterrupted / 3 <= resumed <= uninterrupted * 3
    assert abs(run.metrics[2][BYPASS_KL]) < HF_BYPASS_KL_TOLERANCE  # the restored weights reached the rollout (measured -6e-9)
    assert abs(run.metrics[3][BYPASS_KL]) > 10 * HF_BYPASS_KL_TOLERANCE  # the step-2 update did not (measured -2.5e-4)
    assert not any(key.startswith("am3/sync/logprob_abs_diff") for key in run.metrics[3])  # blind in bypass mode: not logged
    assert (checkpoints / "global_step_2" / "actor" / "huggingface" / "config.json").is_file()


def test_drop_in_single_turn_reward_with_plain_grpo_on_text_only_rows(tmp_path, tiny_qwen_dir, judge_env):
    """An ordinary single-turn, text-only verl dataset, ``reward_fns/am3_single_turn.py`` and plain ``grpo``.

    Text-only rows make every Qwen2.5-VL micro-batch image-less, which verl 0.9.1 alone crashes on in
    ``old_log_prob`` (see ``am3_verl.compat.fix_qwen2_vl_text_only_batches``).
    """
    questions = ["Name a primary colour.", "What shape has three sides?", "How many legs does a spider have?",
                 "Say hello politely.", "Which is larger, 3 or 7?", "Name a fruit that is yellow."]  # fmt: skip
    rows = [
        {"data_source": "single_turn", "prompt": [{"role": "user", "content": q}], "ability": "chat",
         "reward_model": {"style": "model", "ground_truth": None}, "extra_info": {"index": i, "question": q}}
        for i, q in enumerate(questions)
    ]  # fmt: skip
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    pd.DataFrame(rows[:4]).to_parquet(data_dir / "rl_train.parquet")
    pd.DataFrame(rows[4:]).to_parquet(data_dir / "rl_val.parquet")
    run = run_tiny_recipe(
        tmp_path, data_dir, tiny_qwen_dir,
        "algorithm.adv_estimator=grpo", "trainer.v1.trainer_mode=sync",
        "actor_rollout_ref.rollout.agent.default_agent_loop=single_turn_agent",
        f"reward.custom_reward_function.path={REPO / 'reward_fns' / 'am3_single_turn.py'}",
        "data.max_response_length=32", "trainer.total_training_steps=1", "trainer.save_freq=-1", "trainer.test_freq=-1",
        env=judge_env,
    ).check()  # fmt: skip
    metrics = run.metrics[1]
    assert metrics["actor/grad_norm"] > 0
    assert not any(key.startswith("am3/") for key in metrics)
    assert metrics["critic/score/max"] > metrics["critic/score/min"]  # the judge's spread scores reached GRPO


TENSORBOARD_SCALARS = {"am3/harmless/mean", "am3/helpful/mean", "am3/reward/mean", "am3/asr", "am3/alpha/turn_1/mean",
                       "am3/judge_failure_rate"}  # fmt: skip


def tensorboard_tags(folder) -> tuple[dict[str, list], set[str]]:
    """Scalar tag -> [(step, value)] and text tags over every event file verl's writers left in ``folder``."""
    scalars: dict[str, list] = {}
    texts: set[str] = set()
    for event_file in sorted(folder.rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(event_file), size_guidance={"scalars": 0, "tensors": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
        texts.update(acc.Tags()["tensors"])
    return scalars, texts


def test_am3_scalars_and_validation_replies_reach_tensorboard(am3_run):
    """``AM3_LOGGER=console,file,tensorboard``: verl's own TensorBoard tracker (offline, a local event file) gets the
    ``am3/*`` step scalars, the same numbers verl's file logger wrote, and (``trainer.log_val_generations``) the
    validation replies as text."""
    assert "trainer.logger=[console,file,tensorboard] (from AM3_LOGGER)" in am3_run.log
    scalars, texts = tensorboard_tags(am3_run.checkpoints.parent / "tensorboard")  # the run folder
    assert TENSORBOARD_SCALARS <= set(scalars), TENSORBOARD_SCALARS - set(scalars)
    for tag in TENSORBOARD_SCALARS:
        assert scalars[tag] == [(step, pytest.approx(am3_run.metrics[step][tag], rel=1e-6, abs=1e-7)) for step in (1, 2)]
    assert any(tag.startswith("val/generations") for tag in texts), texts
