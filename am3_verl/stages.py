"""The training and evaluation stages of the CPU pipelines (``make demo``, the miniature experiment).

Each stage runs the real product as a user would: the cold-start SFT recipe with ``torchrun`` and
verl's ``sft_trainer``, the tiny CPU GRPO recipe (``python -m verl.trainer.main_ppo``), and
``python -m am3_verl.eval run``. A stage writes its log next to its outputs, raises with the log's
path when the command fails or leaves no model, and returns the folder it produced.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Mapping, Sequence

from tqdm import tqdm

from am3_verl.demo_report import read_step_metrics
from am3_verl.packaged import recipe

SFT_RECIPE = recipe("sft", "cold_start_qwen2_5_vl_7b_8gpu.sh")
GRPO_RECIPE = recipe("grpo", "am3_grpo_tiny_cpu.sh")
CPU_SFT_OVERRIDES = (
    "trainer.device=cpu",
    "model.use_remove_padding=False",
    "+model.override_config.attn_implementation=sdpa",
    "model.enable_gradient_checkpointing=False",
    # fp32 compute: CPU bf16 is slower and rounds the small model's updates away.
    "+engine.mixed_precision.param_dtype=fp32",
    "trainer.logger=[console]",
    "data.use_dynamic_bsz=False",
    "data.num_workers=0",
)


def _env(extra: Mapping[str, str]) -> dict[str, str]:
    """This interpreter's environment first on PATH (the recipes call ``python3``/``torchrun``), plus ``extra``."""
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}", **extra}


def cold_start_sft(
    data_dir: Path, base_model: Path, ckpt_dir: Path, *, steps: int, batch_size: int, lr: float,
    overrides: Sequence[str] = (), log_path: Path, quiet: bool = False,
) -> Path:  # fmt: skip
    """Run the cold-start SFT recipe on the CPU for ``steps`` steps; return the saved Hugging Face folder."""
    data_dir, base_model, ckpt_dir = Path(data_dir).resolve(), Path(base_model).resolve(), Path(ckpt_dir).resolve()
    env = _env({"DATA_DIR": str(data_dir), "MODEL_PATH": str(base_model), "CKPT_DIR": str(ckpt_dir),
                "NPROC_PER_NODE": "1", "VERL_PLATFORM": "cpu"})  # fmt: skip
    command = [
        "bash", str(SFT_RECIPE), *CPU_SFT_OVERRIDES, f"optim.lr={lr}",
        f"data.train_batch_size={batch_size}", f"data.micro_batch_size_per_gpu={batch_size}",
        f"trainer.total_training_steps={steps}", f"trainer.save_freq={steps}", "trainer.total_epochs=100000",
        "data.max_length=1024", *overrides,
    ]  # fmt: skip
    if not quiet:
        print("$ " + " ".join(command), flush=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        process = subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=log_path.parent)
    if process.returncode != 0:
        raise RuntimeError(f"cold-start SFT failed (exit {process.returncode}); see {log_path}")
    hf_dir = ckpt_dir / f"global_step_{steps}" / "huggingface"
    if not (hf_dir / "config.json").is_file():
        raise RuntimeError(f"cold-start SFT wrote no Hugging Face folder at {hf_dir}; see {log_path}")
    return hf_dir


def sft_losses(log_path: Path) -> dict[int, float]:
    """Step -> training loss, read from an SFT log written by :func:`cold_start_sft`."""
    return {int(s): float(v) for s, v in re.findall(r"step:(\d+) .*?train/loss:([0-9.]+)", log_path.read_text())}


def _advance(bar: tqdm, done: int) -> None:
    # update(0) would redraw the bar every poll: a new line each second in a log that is not a terminal
    if done > bar.n:
        bar.update(done - bar.n)


def grpo(
    data_dir: Path, model: Path, run_dir: Path, *, steps: int, prompts: int, rollouts: int, seed: int,
    judge_env: Mapping[str, str], overrides: Sequence[str] = (), progress: str | None = "GRPO steps",
) -> Path:  # fmt: skip
    """Run the tiny CPU GRPO recipe (``main_ppo``) from ``model``; return the trained Hugging Face folder.

    ``judge_env`` names the judge (``AM3_JUDGE_BACKEND`` and, for ``openai``, its URL and model).
    Per-step metrics go to ``run_dir/metrics.jsonl`` (verl's file logger); with ``progress`` a bar ticks
    once per logged step as the run goes.
    """
    data_dir, model, run_dir = Path(data_dir).resolve(), Path(model).resolve(), Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    metrics_file = run_dir / "metrics.jsonl"
    metrics_file.unlink(missing_ok=True)
    env = _env({"DATA_DIR": str(data_dir), "MODEL_PATH": str(model), "CKPT_DIR": str(run_dir / "checkpoints"),
                "VERL_FILE_LOGGER_PATH": str(metrics_file), "AM3_LOGGER": "console,file", **judge_env})  # fmt: skip
    command = [
        "bash", str(GRPO_RECIPE), f"trainer.total_training_steps={steps}", f"trainer.save_freq={steps}",
        "trainer.test_freq=-1", f"actor_rollout_ref.rollout.n={rollouts}",
        f"data.train_batch_size={prompts}", f"actor_rollout_ref.actor.ppo_mini_batch_size={prompts}",
        f"data.seed={seed}",
        # the trained policy as a Hugging Face folder, for evaluation
        "actor_rollout_ref.actor.checkpoint.save_contents=[model,optimizer,extra,hf_model]",
        *overrides,
    ]  # fmt: skip
    log_path = run_dir / "main_ppo.log"
    with open(log_path, "w") as log:
        if progress:
            print("$ " + " ".join(command), flush=True)
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=run_dir)
        with tqdm(total=steps, desc=progress or "", unit="step", disable=not progress) as bar:
            while process.poll() is None:
                time.sleep(1.0)
                _advance(bar, len(read_step_metrics(metrics_file)))
            _advance(bar, len(read_step_metrics(metrics_file)))
    if process.returncode != 0:
        raise RuntimeError(f"GRPO (main_ppo) failed (exit {process.returncode}); see {log_path}")
    hf_dir = run_dir / "checkpoints" / f"global_step_{steps}" / "actor" / "huggingface"
    if not any(hf_dir.glob("*.safetensors")):
        raise RuntimeError(f"GRPO wrote no Hugging Face weights at {hf_dir}; see {log_path}")
    return hf_dir


def evaluate(
    data: Path, model: Path, results_dir: Path, *, judge_args: Sequence[str], max_tokens: int, seed: int,
    title: str, baseline: Path | None = None, bootstrap: int = 200, quiet: bool = False,
) -> Path:  # fmt: skip
    """``python -m am3_verl.eval run`` of ``model`` on ``data`` (greedy, interactive); return the results folder."""
    from am3_verl.eval.cli import main as eval_main

    argv = [
        "run", "--data", str(data), "--model", str(model), "--output_dir", str(results_dir), *judge_args,
        "--max_tokens", str(max_tokens), "--title", title, "--bootstrap", str(bootstrap), "--seed", str(seed),
    ]  # fmt: skip
    if baseline is not None:
        argv += ["--baseline", str(baseline)]
    if quiet:
        argv.append("--no_progress")
    code = eval_main(argv)
    if code != 0:
        raise RuntimeError(f"evaluation of {model} failed (exit {code}); see {results_dir}")
    return results_dir
