"""verl's own SFT trainer runs on the CPU through am3-verl's CPU platform (torchrun, gloo, FSDP2)."""

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from am3_verl.compat.cpu import FULL_LM_HEAD_ENV
from am3_verl.compat.loss_positions_head import ANNOUNCEMENT

CPU_OVERRIDES = [
    "trainer.device=cpu",
    "engine.strategy=fsdp2",
    "model.use_remove_padding=False",
    "+model.override_config.attn_implementation=sdpa",
]


def _png(color, size) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def write_multiturn_image_sft_parquet(path: Path, rows: int = 8) -> Path:
    """Two user turns, each with an image, and two assistant replies per row."""
    records = [
        {
            "messages": [
                {"role": "user", "content": "<image>What is in this picture?"},
                {"role": "assistant", "content": "A coloured square."},
                {"role": "user", "content": "And here? <image> How could it be misused?"},
                {"role": "assistant", "content": "I'm sorry, I can't help with that: it could put people at risk."},
            ],
            "images": [{"bytes": _png((20 * i, 100, 200), (56, 56))}, {"bytes": _png((200, 20 * i, 50), (84, 56))}],
        }
        for i in range(rows)
    ]
    pq.write_table(pa.Table.from_pylist(records), path)
    return path


@pytest.mark.slow  # two fresh interpreters that import verl
def test_cpu_platform_is_not_selected_without_the_environment_variable():
    code = "from verl.utils.device import get_device_name; print(get_device_name())"
    env = {k: v for k, v in os.environ.items() if k != "VERL_PLATFORM"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.stdout.strip().splitlines()[-1] == "cuda"  # verl's own fallback on a GPU-less machine
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**env, "VERL_PLATFORM": "cpu"}, timeout=300)
    assert out.stdout.strip().splitlines()[-1] == "cpu"


def run_sft_trainer(data: Path, model: Path, ckpt: Path, cwd: Path, save_freq: int, extra_env=None) -> str:
    """verl's SFT trainer for 2 steps on the CPU platform (torchrun, one process); returns its log."""
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=1",
        "-m", "verl.trainer.sft_trainer",
        f"data.train_files={data}", "data.val_files=null", "data.train_batch_size=4",
        "data.micro_batch_size_per_gpu=2", "data.max_length=512", "data.use_dynamic_bsz=False", "data.num_workers=0",
        f"model.path={model}", "optim.lr=1e-3",
        "trainer.total_training_steps=2", f"trainer.save_freq={save_freq}", "trainer.logger=[console]",
        f"trainer.default_local_dir={ckpt}", "trainer.resume_mode=disable",
        *CPU_OVERRIDES,
    ]  # fmt: skip
    env = {**os.environ, "VERL_PLATFORM": "cpu", "OMP_NUM_THREADS": "2", **(extra_env or {})}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, cwd=cwd)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    return log


def step_figures(log: str, name: str) -> list[float]:
    return [float(x) for x in re.findall(rf"train/{name}:([0-9.e+-]+)", log)]


@pytest.mark.slow
def test_verl_sft_trainer_runs_two_steps_on_cpu_with_the_head_only_where_the_loss_reads(tiny_qwen_dir, tmp_path):
    """The CPU engine (output head at the loss's positions) trains as verl's own engine (head everywhere) does."""
    data = write_multiturn_image_sft_parquet(tmp_path / "sft.parquet")
    ckpt = tmp_path / "ckpt"
    log = run_sft_trainer(data, tiny_qwen_dir, ckpt, tmp_path, save_freq=2)
    losses = step_figures(log, "loss")
    assert len(losses) == 2, log[-4000:]
    assert losses[0] != losses[1]
    step_dir = ckpt / "global_step_2"
    assert (step_dir / "model_world_size_1_rank_0.pt").stat().st_size > 1_000_000
    assert (ckpt / "latest_checkpointed_iteration.txt").read_text().strip() == "2"

    full_head = run_sft_trainer(data, tiny_qwen_dir, tmp_path / "ckpt-full", tmp_path, save_freq=-1,
                                extra_env={FULL_LM_HEAD_ENV: "1"})  # fmt: skip
    assert ANNOUNCEMENT in log and ANNOUNCEMENT not in full_head  # each run trained with the engine it names
    assert step_figures(full_head, "loss") == pytest.approx(losses, rel=1e-5)
    assert step_figures(full_head, "grad_norm") == pytest.approx(step_figures(log, "grad_norm"), rel=1e-5)
