#!/usr/bin/env bash
# Cold-start refusal SFT of Qwen2.5-VL-7B-Instruct with LoRA on one GPU.
# Hardware: 1x 80 GB GPU (or 48 GB with data.max_token_len_per_gpu=8192). About an hour for 2 epochs.
# Data: as the 8-GPU recipe. The checkpoint holds the LoRA weights; merge them into a Hugging Face
# folder for GRPO with verl's merger:
#   python -m verl.model_merger merge --backend fsdp --local_dir $CKPT_DIR/global_step_N --target_dir $CKPT_DIR/merged
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

DATA_DIR=${DATA_DIR:-$HOME/data/am3}
MODEL_PATH=${MODEL_PATH:-Qwen/Qwen2.5-VL-7B-Instruct}
CKPT_DIR=${CKPT_DIR:-$HOME/checkpoints/am3/cold_start_qwen2_5_vl_7b_lora}

OVERRIDES=(
  data.train_files="$DATA_DIR/cold_start.parquet"
  data.val_files=null
  data.messages_key=messages
  data.max_length=4096
  data.truncation=error
  # Smaller global batch than the 8-GPU recipe: one GPU accumulates 16 samples per step.
  data.train_batch_size=16
  data.micro_batch_size_per_gpu=2
  data.use_dynamic_bsz=True
  data.max_token_len_per_gpu=12288
  model.path="$MODEL_PATH"
  model.enable_gradient_checkpointing=True
  # LoRA rank 64 on every linear layer of the language model; the vision tower stays frozen.
  model.lora_rank=64
  model.lora_alpha=128
  model.target_modules=all-linear
  engine.strategy=fsdp2
  # LoRA tolerates (and needs) a larger learning rate than a full fine-tune.
  optim.lr=1e-4
  optim.lr_warmup_steps_ratio=0.05
  optim.lr_scheduler_type=cosine
  trainer.total_epochs=2
  trainer.project_name=am3-verl
  trainer.experiment_name=cold_start_qwen2_5_vl_7b_lora
  trainer.default_local_dir="$CKPT_DIR"
  trainer.logger='[console,wandb]'
  trainer.n_gpus_per_node=1
  checkpoint.save_contents='[model,optimizer,extra]'
)

am3_run torchrun --standalone --nnodes=1 --nproc_per_node=1 -m verl.trainer.sft_trainer \
  -- "${OVERRIDES[@]}" -- "$@"
