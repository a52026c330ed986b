#!/usr/bin/env bash
# AM3 GRPO of LLaVA-NeXT-7B (llava-v1.6-mistral-7b-hf) over whole dialogues, from its cold-start SFT checkpoint
# (recipes/sft/cold_start_llava_next_7b_8gpu.sh). vLLM serves LlavaNextForConditionalGeneration for the rollout.
# Hardware: 1 node, 8x 80 GB GPUs for the policy (vLLM rollout TP 2 + FSDP2 training, colocated), plus
# the judge on its own GPUs (e.g. 4 more), e.g.:
#   vllm serve Qwen/Qwen2.5-VL-72B-Instruct --tensor-parallel-size 4 --port 8000 --max-model-len 32768 \
#     --limit-mm-per-prompt '{"image": 8}'
#   export AM3_JUDGE_BASE_URL=http://judge-host:8000/v1 AM3_JUDGE_MODEL=Qwen/Qwen2.5-VL-72B-Instruct
# Data: `python data_prep/intersafe_v.py --input ... --output_dir $DATA_DIR` (rl_train / rl_val parquet).
# Watch: am3/* metrics (harmless, helpful, asr, alpha by turn, judge failures) every step,
# val-aux/intersafe_v/{asr,harmless,helpful}/mean@1 at each test_freq, response_length/clip_ratio
# (whole dialogues must fit data.max_response_length).
# Differences from the Qwen2.5-VL recipe, and why (everything else is the paper's setting, unchanged):
#   * am3_verl.models (activated by the am3-verl plugin) gives verl a LLaVA-NeXT processor with a fixed
#     crop count per image, so rollout batches carry pixel_values [images, 5, 3, 336, 336] + image_sizes
#     that concatenate across samples; the am3_dialogue loop uses a continuous-token builder that keeps
#     the chat template's turn boundaries; positions are 1-D (no M-RoPE);
#   * data.max_prompt_length=4096 / max_response_length=8192: up to ~2,900 tokens per image
#     (1 base + up to 4 crops); the Mistral backbone's 32k context holds it (Vicuna's 4k does not:
#     with llava-v1.6-vicuna-7b-hf keep prompt + response <= 4096 and at most one image per dialogue);
#   * +actor_rollout_ref.rollout.limit_images=4: fewer images fit the token budget than with Qwen;
#   * actor_rollout_ref.model.use_remove_padding=False: verl's packed forward is validated for
#     Qwen-VL's vision path only; ppo_max_token_len_per_gpu=24576 for the longer sequences.
# Extra key=value arguments replace the values below.
set -euo pipefail
RECIPES="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"  # -P: the checkout's recipes/, also when called through am3_verl/recipes
source "$RECIPES/lib.sh"

DATA_DIR=${DATA_DIR:-$HOME/data/am3}
MODEL_PATH=${MODEL_PATH:?set MODEL_PATH to the cold-start checkpoint (its huggingface folder)}
CKPT_DIR=${CKPT_DIR:-$HOME/checkpoints/am3/am3_grpo_llava_next_7b}
REPO_DIR="$(dirname "$RECIPES")"
# The judge: the rubric VLM judge at AM3_JUDGE_BASE_URL (AM3_JUDGE_BACKEND=heuristic only for offline runs).
am3_judge_overrides "${AM3_JUDGE_BACKEND:-openai}"
am3_logger_overrides console,wandb

OVERRIDES=(
  # The method: turn-aware dual-objective advantage (paper eqs. 6-9); defaults shown explicitly.
  algorithm.adv_estimator=am3_grpo
  +algorithm.am3.tau=0.5
  +algorithm.am3.lambda_=1.0
  +algorithm.am3.beta=1.0
  +algorithm.am3.temperature=1.0
  +algorithm.am3.variant=paper
  # Per-turn scores travel in the token rewards: no KL penalty may be added to them (KL is in the loss).
  algorithm.use_kl_in_reward=False
  data.train_files="$DATA_DIR/rl_train.parquet"
  data.val_files="$DATA_DIR/rl_val.parquet"
  data.image_key=images
  # Paper: global batch 128 dialogues, 8 rollouts each.
  data.train_batch_size=128
  # The prompt is the first user turn; the response holds every reply plus the later user turns and
  # their image tokens, so it is much longer than a single-turn recipe's.
  data.max_prompt_length=4096
  data.max_response_length=8192
  data.filter_overlong_prompts=True
  actor_rollout_ref.model.path="$MODEL_PATH"
  actor_rollout_ref.model.use_remove_padding=False
  actor_rollout_ref.model.enable_gradient_checkpointing=True
  actor_rollout_ref.actor.strategy=fsdp2
  actor_rollout_ref.actor.optim.lr=1e-6
  # Paper: PPO mini-batch 8 dialogues (x 8 rollouts = 64 sequences per update, 16 updates per step).
  actor_rollout_ref.actor.ppo_mini_batch_size=8
  actor_rollout_ref.actor.use_dynamic_bsz=True
  actor_rollout_ref.actor.ppo_max_token_len_per_gpu=24576
  actor_rollout_ref.actor.use_kl_loss=True
  actor_rollout_ref.actor.kl_loss_coef=0.01
  actor_rollout_ref.actor.kl_loss_type=low_var_kl
  actor_rollout_ref.actor.entropy_coeff=0
  actor_rollout_ref.ref.strategy=fsdp2
  actor_rollout_ref.rollout.name=vllm
  actor_rollout_ref.rollout.tensor_model_parallel_size=2
  actor_rollout_ref.rollout.gpu_memory_utilization=0.6
  actor_rollout_ref.rollout.n=8
  # Up to 4 images per dialogue reach vLLM (InterSafe-V averages 1.53; each LLaVA-NeXT image costs up to
  # ~2,900 tokens); a RolloutConfig field absent from the YAML.
  +actor_rollout_ref.rollout.limit_images=4
  # Whole-dialogue rollouts: the am3_dialogue agent loop replays the dataset's later user turns.
  actor_rollout_ref.rollout.agent.agent_loop_config_path="$REPO_DIR/recipes/agent_loops/am3_dialogue.yaml"
  actor_rollout_ref.rollout.agent.default_agent_loop=am3_dialogue
  # Per-turn judge scores (harmless + helpful) from the judge endpoint in AM3_JUDGE_BASE_URL.
  reward.custom_reward_function.path="$REPO_DIR/reward_fns/am3_multi_turn.py"
  reward.custom_reward_function.name=compute_score
  "${JUDGE_OVERRIDES[@]}"
  +reward.custom_reward_function.reward_kwargs.max_concurrency=256
  +reward.custom_reward_function.reward_kwargs.timeout_s=120
  # verl's sync trainer plus the am3/* training metrics (harmless, helpful, ASR, alpha) every step.
  trainer.v1.trainer_mode=am3_sync
  # A judge that fails on more than 20% of a step's turns for 2 steps in a row stops the run, after a
  # checkpoint (rerun to resume); the judge is probed once before the workers start (am3_verl/training).
  +trainer.am3.max_judge_failure_rate=0.2
  +trainer.am3.max_judge_failed_steps=2
  +trainer.am3.probe_judge=True
  trainer.project_name=am3-verl
  trainer.experiment_name=am3_grpo_llava_next_7b
  trainer.default_local_dir="$CKPT_DIR"
  # Trackers: AM3_LOGGER=console,tensorboard,wandb,mlflow (any of them; default console,wandb).
  "${LOGGER_OVERRIDES[@]}"
  # Validation replies (prompt, reply, score) logged to the trackers that show tables (wandb, tensorboard, mlflow).
  trainer.log_val_generations=10
  # Long runs: a rerun of the same command resumes from the newest checkpoint in trainer.default_local_dir
  # (CKPT_DIR); trainer.resume_mode=disable starts afresh, trainer.resume_mode=resume_path with
  # trainer.resume_from_path=$CKPT_DIR/global_step_N resumes from a chosen one.
  trainer.resume_mode=auto
  trainer.n_gpus_per_node=8
  trainer.nnodes=1
  # Paper: fewer than 15 epochs over 7,000 dialogues.
  trainer.total_epochs=15
  trainer.save_freq=50
  trainer.test_freq=25
  trainer.val_before_train=True
)

am3_run python3 -m verl.trainer.main_ppo -- "${OVERRIDES[@]}" -- "$@"
