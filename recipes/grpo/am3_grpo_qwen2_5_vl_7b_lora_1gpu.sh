#!/usr/bin/env bash
# AM3 GRPO of Qwen2.5-VL-7B-Instruct with LoRA on one GPU, the judge behind an external endpoint.
# Hardware: 1x 80 GB GPU for policy, rollout and reference (colocated); the judge elsewhere, e.g.
#   vllm serve Qwen/Qwen2.5-VL-72B-Instruct --tensor-parallel-size 4 --port 8000
#   export AM3_JUDGE_BASE_URL=http://judge-host:8000/v1 AM3_JUDGE_MODEL=Qwen/Qwen2.5-VL-72B-Instruct
# (any OpenAI-compatible VLM works; a smaller judge such as Qwen2.5-VL-32B fits on 2 GPUs).
# Data and what to watch: as the 8-GPU recipe. Differences are commented below.
set -euo pipefail
RECIPES="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"  # -P: the checkout's recipes/, also when called through am3_verl/recipes
source "$RECIPES/lib.sh"

DATA_DIR=${DATA_DIR:-$HOME/data/am3}
MODEL_PATH=${MODEL_PATH:?set MODEL_PATH to the cold-start checkpoint (its huggingface folder)}
CKPT_DIR=${CKPT_DIR:-$HOME/checkpoints/am3/am3_grpo_qwen2_5_vl_7b_lora}
REPO_DIR="$(dirname "$RECIPES")"
# The judge: the rubric VLM judge at AM3_JUDGE_BASE_URL (AM3_JUDGE_BACKEND=heuristic only for offline runs).
am3_judge_overrides "${AM3_JUDGE_BACKEND:-openai}"
am3_logger_overrides console,wandb

OVERRIDES=(
  algorithm.adv_estimator=am3_grpo
  +algorithm.am3.tau=0.5
  +algorithm.am3.lambda_=1.0
  +algorithm.am3.beta=1.0
  +algorithm.am3.temperature=1.0
  +algorithm.am3.variant=paper
  algorithm.use_kl_in_reward=False
  data.train_files="$DATA_DIR/rl_train.parquet"
  data.val_files="$DATA_DIR/rl_val.parquet"
  data.image_key=images
  # One GPU: 16 dialogues per step instead of 128 (still 8 rollouts each).
  data.train_batch_size=16
  data.max_prompt_length=2048
  data.max_response_length=4096
  data.filter_overlong_prompts=True
  actor_rollout_ref.model.path="$MODEL_PATH"
  actor_rollout_ref.model.use_remove_padding=True
  actor_rollout_ref.model.enable_gradient_checkpointing=True
  # LoRA rank 64 on all linear layers; vLLM serves the adapter, so only it is synced each step.
  actor_rollout_ref.model.lora_rank=64
  actor_rollout_ref.model.lora_alpha=128
  actor_rollout_ref.model.target_modules=all-linear
  actor_rollout_ref.actor.strategy=fsdp2
  # LoRA needs a larger learning rate than full fine-tuning.
  actor_rollout_ref.actor.optim.lr=1e-5
  actor_rollout_ref.actor.ppo_mini_batch_size=8
  actor_rollout_ref.actor.use_dynamic_bsz=True
  actor_rollout_ref.actor.ppo_max_token_len_per_gpu=12288
  actor_rollout_ref.actor.use_kl_loss=True
  actor_rollout_ref.actor.kl_loss_coef=0.01
  actor_rollout_ref.actor.kl_loss_type=low_var_kl
  actor_rollout_ref.actor.entropy_coeff=0
  # Offload parameters and optimizer state between phases to fit policy, reference and vLLM on one GPU.
  actor_rollout_ref.actor.fsdp_config.param_offload=True
  actor_rollout_ref.actor.fsdp_config.optimizer_offload=True
  actor_rollout_ref.ref.strategy=fsdp2
  actor_rollout_ref.ref.fsdp_config.param_offload=True
  actor_rollout_ref.rollout.name=vllm
  actor_rollout_ref.rollout.tensor_model_parallel_size=1
  actor_rollout_ref.rollout.gpu_memory_utilization=0.45
  actor_rollout_ref.rollout.n=8
  +actor_rollout_ref.rollout.limit_images=8
  actor_rollout_ref.rollout.agent.agent_loop_config_path="$REPO_DIR/recipes/agent_loops/am3_dialogue.yaml"
  actor_rollout_ref.rollout.agent.default_agent_loop=am3_dialogue
  reward.custom_reward_function.path="$REPO_DIR/reward_fns/am3_multi_turn.py"
  reward.custom_reward_function.name=compute_score
  "${JUDGE_OVERRIDES[@]}"
  +reward.custom_reward_function.reward_kwargs.max_concurrency=128
  +reward.custom_reward_function.reward_kwargs.timeout_s=120
  trainer.v1.trainer_mode=am3_sync
  # A judge that fails on more than 20% of a step's turns for 2 steps in a row stops the run, after a
  # checkpoint (rerun to resume); the judge is probed once before the workers start (am3_verl/training).
  +trainer.am3.max_judge_failure_rate=0.2
  +trainer.am3.max_judge_failed_steps=2
  +trainer.am3.probe_judge=True
  trainer.project_name=am3-verl
  trainer.experiment_name=am3_grpo_qwen2_5_vl_7b_lora
  trainer.default_local_dir="$CKPT_DIR"
  # Trackers: AM3_LOGGER=console,tensorboard,wandb,mlflow (any of them; default console,wandb).
  "${LOGGER_OVERRIDES[@]}"
  # Validation replies (prompt, reply, score) logged to the trackers that show tables (wandb, tensorboard, mlflow).
  trainer.log_val_generations=10
  # Long runs: a rerun of the same command resumes from the newest checkpoint in trainer.default_local_dir
  # (CKPT_DIR); trainer.resume_mode=disable starts afresh, trainer.resume_mode=resume_path with
  # trainer.resume_from_path=$CKPT_DIR/global_step_N resumes from a chosen one.
  trainer.resume_mode=auto
  trainer.n_gpus_per_node=1
  trainer.nnodes=1
  trainer.total_epochs=15
  trainer.save_freq=50
  trainer.test_freq=25
  trainer.val_before_train=True
)

am3_run python3 -m verl.trainer.main_ppo -- "${OVERRIDES[@]}" -- "$@"
