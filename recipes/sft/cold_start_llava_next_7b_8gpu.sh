#!/usr/bin/env bash
# Cold-start refusal SFT of LLaVA-NeXT-7B (llava-hf/llava-v1.6-mistral-7b-hf by default; the Vicuna
# variant llava-hf/llava-v1.6-vicuna-7b-hf works too but has a 4k context): full fine-tune.
# Hardware: 1 node, 8x 80 GB GPUs. Data and output as in cold_start_qwen2_5_vl_7b_8gpu.sh.
# LLaVA-NeXT needs am3-verl's base-model support (am3_verl.models: verl 0.9.1's hf_processor has no
# LLaVA-NeXT processor); the am3-verl plugin activates it in every process that imports verl.
# Differences from the Qwen2.5-VL recipe, and why:
#   * data.max_length=8192: an image is 1 base + up to 4 any-resolution crops of 336 px, i.e. up to
#     ~2,900 image tokens (Qwen2.5-VL's dynamic resolution gives a few hundred for typical images);
#   * model.use_remove_padding=False: verl's packed (remove-padding) forward is validated for Qwen-VL's
#     vision path only; LLaVA-NeXT runs the padded forward (the one checked on CPU);
#   * data.max_token_len_per_gpu=24576 and micro batch 1: fewer, longer samples per GPU.
# Extra key=value arguments replace the values below (e.g. trainer.total_epochs=1).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

DATA_DIR=${DATA_DIR:-$HOME/data/am3}
MODEL_PATH=${MODEL_PATH:-llava-hf/llava-v1.6-mistral-7b-hf}
CKPT_DIR=${CKPT_DIR:-$HOME/checkpoints/am3/cold_start_llava_next_7b}
NPROC_PER_NODE=${NPROC_PER_NODE:-8}

OVERRIDES=(
  data.train_files="$DATA_DIR/cold_start.parquet"
  data.val_files=null
  data.messages_key=messages
  # Up to ~2,900 tokens per image (any-resolution tiling) plus the dialogue.
  data.max_length=8192
  data.truncation=error
  data.train_batch_size=64
  data.micro_batch_size_per_gpu=1
  data.use_dynamic_bsz=True
  data.max_token_len_per_gpu=24576
  model.path="$MODEL_PATH"
  model.enable_gradient_checkpointing=True
  # The padded forward: verl's remove-padding path is not validated for LLaVA-NeXT.
  model.use_remove_padding=False
  engine.strategy=fsdp2
  optim.lr=1e-5
  optim.lr_warmup_steps_ratio=0.05
  optim.lr_scheduler_type=cosine
  optim.weight_decay=0.0
  trainer.total_epochs=2
  trainer.project_name=am3-verl
  trainer.experiment_name=cold_start_llava_next_7b
  trainer.default_local_dir="$CKPT_DIR"
  trainer.logger='[console,wandb]'
  trainer.n_gpus_per_node="$NPROC_PER_NODE"
  trainer.save_freq=-1
  # Save a Hugging Face folder next to the sharded checkpoint: GRPO starts from it.
  checkpoint.save_contents='[model,optimizer,extra,hf_model]'
)

am3_run torchrun --standalone --nnodes=1 --nproc_per_node="$NPROC_PER_NODE" -m verl.trainer.sft_trainer \
  -- "${OVERRIDES[@]}" -- "$@"
