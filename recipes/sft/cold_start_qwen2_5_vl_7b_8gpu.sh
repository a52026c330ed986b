#!/usr/bin/env bash
# Cold-start refusal SFT ("refusal template learning") of Qwen2.5-VL-7B-Instruct: full fine-tune.
# Hardware: 1 node, 8x 80 GB GPUs (A100/H100/H800). About 20 minutes for 2 epochs of ~1k samples.
# Data: `python data_prep/cold_start.py --refusal ... --general ... --output_dir $DATA_DIR` (refusal VQA
# mixed with benign VQA). Output: $CKPT_DIR/global_step_*/huggingface, the GRPO recipes' MODEL_PATH.
# Extra key=value arguments replace the values below (e.g. trainer.total_epochs=1).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

DATA_DIR=${DATA_DIR:-$HOME/data/am3}
MODEL_PATH=${MODEL_PATH:-Qwen/Qwen2.5-VL-7B-Instruct}
CKPT_DIR=${CKPT_DIR:-$HOME/checkpoints/am3/cold_start_qwen2_5_vl_7b}
NPROC_PER_NODE=${NPROC_PER_NODE:-8}

OVERRIDES=(
  data.train_files="$DATA_DIR/cold_start.parquet"
  data.val_files=null
  data.messages_key=messages
  # Refusal answers are short; 4k tokens hold a few images plus the dialogue.
  data.max_length=4096
  data.truncation=error
  # Global batch 64 samples; dynamic batching packs up to 16k tokens per GPU.
  data.train_batch_size=64
  data.micro_batch_size_per_gpu=2
  data.use_dynamic_bsz=True
  data.max_token_len_per_gpu=16384
  model.path="$MODEL_PATH"
  model.enable_gradient_checkpointing=True
  engine.strategy=fsdp2
  # A small learning rate: teach the refusal template without eroding general ability.
  optim.lr=1e-5
  optim.lr_warmup_steps_ratio=0.05
  optim.lr_scheduler_type=cosine
  optim.weight_decay=0.0
  trainer.total_epochs=2
  trainer.project_name=am3-verl
  trainer.experiment_name=cold_start_qwen2_5_vl_7b
  trainer.default_local_dir="$CKPT_DIR"
  trainer.logger='[console,wandb]'
  trainer.n_gpus_per_node="$NPROC_PER_NODE"
  trainer.save_freq=-1
  # Save a Hugging Face folder next to the sharded checkpoint: GRPO starts from it.
  checkpoint.save_contents='[model,optimizer,extra,hf_model]'
)

am3_run torchrun --standalone --nnodes=1 --nproc_per_node="$NPROC_PER_NODE" -m verl.trainer.sft_trainer \
  -- "${OVERRIDES[@]}" -- "$@"
