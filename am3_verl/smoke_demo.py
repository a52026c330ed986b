"""``make demo-smoke`` (``python -m am3_verl.demo --smoke``): every stage of the AM3 pipeline, once, on a CPU.

A smoke test of the pipeline, not a demonstration of learning (that is ``make demo``,
:mod:`am3_verl.demo`): the bundled InterSafe-V sample and a random tiny model, judged offline by keyword
rules by default. Every stage is real:

1. **data** – the bundled sample (InterSafe-V dialogues, refusal VQA, benign VQA) through the data
   preparation converters into verl parquet;
2. **cold-start SFT** – the 8-GPU cold-start recipe run by ``torchrun`` with verl's ``sft_trainer`` on
   the offline tiny Qwen2.5-VL, with only the CPU, size and device overrides (am3-verl's CPU platform);
3. **AM3 GRPO** – ``python -m verl.trainer.main_ppo`` through ``recipes/grpo/am3_grpo_tiny_cpu.sh`` from the
   SFT checkpoint: whole dialogues played by ``am3_dialogue`` on the ``hf`` rollout backend, every turn
   judged, ``am3_grpo`` advantages, FSDP2 policy updates with the weights synced to the rollout every step;
4. **evaluation** – ``python -m am3_verl.eval run`` of the SFT and the GRPO checkpoints on the validation
   dialogues (the GRPO run against the SFT run as its baseline);
5. **report** – ``report.html`` in ``--output_dir``: the per-step training curves and the before/after table,
   linking the two evaluation reports.

The judge is named on the command line (``--judge heuristic`` or ``--judge openai`` with
``AM3_JUDGE_BASE_URL``/``AM3_JUDGE_MODEL``); with the offline heuristic the report says so at the top.
The tiny model starts from random weights, so a few steps move its numbers, not its manners: the run
shows the training loop working end to end, not a safe model.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from am3_verl import stages
from am3_verl.demo_report import read_step_metrics
from am3_verl.local.rollout import default_model_dir

JUDGES = ("heuristic", "openai")
SFT_LR = 5e-4
"""The tiny model has random weights: a larger step than the recipe's makes the SFT loss visibly move in 4 steps."""


@dataclass
class DemoConfig:
    """Embedded CPU defaults of ``make demo`` (each is a command-line flag)."""

    output_dir: Path
    judge: str
    """``heuristic`` (offline keyword rules) or ``openai`` (AM3_JUDGE_BASE_URL / AM3_JUDGE_MODEL); no default."""
    prompts: int = 2
    """Dialogues per GRPO step."""
    rollouts: int = 4
    """Rollouts per dialogue (the GRPO group size; the paper uses 8)."""
    sft_steps: int = 4
    sft_batch_size: int = 4
    grpo_steps: int = 4
    max_reply_tokens: int = 24
    """Reply cap in evaluation (training: recipes/agent_loops/am3_dialogue_tiny.yaml)."""
    seed: int = 0
    am3: tuple[str, ...] = ()
    """``KEY=VALUE`` settings of ``algorithm.am3``."""


@dataclass
class StageLog:
    """Wall time per stage, for the closing summary."""

    seconds: dict[str, float] = field(default_factory=dict)

    def run(self, name: str, fn, *args, **kwargs):
        print(f"\n== {name} ==", flush=True)
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        self.seconds[name] = time.perf_counter() - start
        print(f"-- {name}: {self.seconds[name]:.1f}s", flush=True)
        return result


def prepare_data(cfg: DemoConfig) -> Path:
    """Convert the bundled sample into ``output_dir/data`` (RL train/val and cold-start SFT parquet)."""
    from am3_verl.data.cold_start import main as cold_start
    from am3_verl.data.intersafe_v import main as intersafe_v
    from am3_verl.data.sample import SAMPLE_DIR

    data_dir = cfg.output_dir / "data"
    intersafe_v(["--input", str(SAMPLE_DIR / "intersafe_v.jsonl"), "--output_dir", str(data_dir), "--val_size", "8"])
    cold_start(
        ["--refusal", str(SAMPLE_DIR / "refusal_vqa.jsonl"), "--general", str(SAMPLE_DIR / "general.jsonl"),
         "--general_ratio", "0.5", "--output_dir", str(data_dir)]
    )  # fmt: skip
    return data_dir


def cold_start_sft(cfg: DemoConfig, data_dir: Path, base_model: Path) -> Path:
    """Run the cold-start SFT recipe on the CPU; return the saved Hugging Face folder."""
    log_path = cfg.output_dir / "sft.log"
    hf_dir = stages.cold_start_sft(
        data_dir,
        base_model,
        cfg.output_dir / "sft",
        steps=cfg.sft_steps,
        batch_size=cfg.sft_batch_size,
        lr=SFT_LR,
        log_path=log_path,
    )
    for step, loss in sorted(stages.sft_losses(log_path).items()):
        print(f"   SFT step {step}: loss {loss:.4f}")
    return hf_dir


def grpo(cfg: DemoConfig, data_dir: Path, sft_model: Path) -> Path:
    """Run AM3 GRPO with ``main_ppo`` (the tiny CPU recipe) from ``sft_model``; return the trained Hugging Face folder."""
    run_dir = cfg.output_dir / "grpo"
    hf_dir = stages.grpo(
        data_dir,
        sft_model,
        run_dir,
        steps=cfg.grpo_steps,
        prompts=cfg.prompts,
        rollouts=cfg.rollouts,
        seed=cfg.seed,
        judge_env={"AM3_JUDGE_BACKEND": cfg.judge},
        overrides=[f"+algorithm.am3.{kv}" for kv in cfg.am3],
    )
    for step, metrics in read_step_metrics(run_dir / "metrics.jsonl").items():
        print(f"   GRPO step {step}: reward {metrics['am3/reward/mean']:.3f}, harmless {metrics['am3/harmless/mean']:.3f}, "
              f"helpful {metrics['am3/helpful/mean']:.3f}, ASR {metrics['am3/asr']:.3f}, "
              f"rollout/actor log-prob gap {metrics.get('am3/sync/logprob_abs_diff/max', float('nan')):.1e}")  # fmt: skip
    return hf_dir


def evaluate(cfg: DemoConfig, data_dir: Path, model_dir: Path, name: str, baseline: Path | None = None) -> Path:
    """Evaluate ``model_dir`` with ``python -m am3_verl.eval run`` on the validation dialogues; return the results folder."""
    return stages.evaluate(
        data_dir / "rl_val.parquet",
        model_dir,
        cfg.output_dir / "eval" / name,
        judge_args=["--judge_backend", cfg.judge],
        max_tokens=cfg.max_reply_tokens,
        seed=cfg.seed,
        title=f"{name} checkpoint",
        baseline=baseline,
    )


def main(argv: list[str] | None = None) -> int:
    """Run the smoke pipeline; returns the process exit code."""
    parser = argparse.ArgumentParser(prog="python -m am3_verl.demo --smoke", description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", default="outputs/demo-smoke", help="where data, checkpoints, evaluations and the report go")
    parser.add_argument(
        "--judge",
        required=True,
        choices=JUDGES,
        help="heuristic: offline keyword rules; openai: the judge at AM3_JUDGE_BASE_URL serving AM3_JUDGE_MODEL",
    )
    parser.add_argument("--prompts", type=int, default=DemoConfig.prompts, help="dialogues per GRPO step")
    parser.add_argument("--rollouts", type=int, default=DemoConfig.rollouts, help="rollouts per dialogue (group size)")
    parser.add_argument("--sft_steps", type=int, default=DemoConfig.sft_steps, help="cold-start SFT steps")
    parser.add_argument("--grpo_steps", type=int, default=DemoConfig.grpo_steps, help="AM3 GRPO steps")
    parser.add_argument("--max_reply_tokens", type=int, default=DemoConfig.max_reply_tokens, help="reply cap in evaluation")
    parser.add_argument("--seed", type=int, default=DemoConfig.seed)
    parser.add_argument(
        "--am3", action="append", default=[], metavar="KEY=VALUE",
        help="AM3 advantage setting, e.g. --am3 tau=0.6 (becomes +algorithm.am3.KEY=VALUE)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    cfg = DemoConfig(
        output_dir=Path(args.output_dir).resolve(), judge=args.judge, prompts=args.prompts, rollouts=args.rollouts,
        sft_steps=args.sft_steps, grpo_steps=args.grpo_steps, max_reply_tokens=args.max_reply_tokens, seed=args.seed,
        am3=tuple(args.am3),
    )  # fmt: skip
    cfg.output_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    log = StageLog()
    start = time.perf_counter()

    from am3_verl.demo_report import write_demo_report
    from am3_verl.local.tiny_models import build_all

    base_model = build_all(default_model_dir().parent)["qwen2_5_vl"]
    data_dir = log.run("1/5 data preparation", prepare_data, cfg)
    sft_model = log.run("2/5 cold-start SFT (verl sft_trainer, CPU)", cold_start_sft, cfg, data_dir, base_model)
    grpo_model = log.run("3/5 AM3 GRPO (verl main_ppo, hf rollout, CPU)", grpo, cfg, data_dir, sft_model)
    before = log.run("4/5 evaluation: SFT checkpoint", evaluate, cfg, data_dir, sft_model, "sft")
    after = log.run("4/5 evaluation: GRPO checkpoint", evaluate, cfg, data_dir, grpo_model, "grpo", baseline=before)
    report = log.run(
        "5/5 report", write_demo_report, cfg.output_dir / "report.html", cfg.output_dir / "grpo" / "metrics.jsonl", before, after, cfg.judge
    )  # fmt: skip

    training = read_step_metrics(cfg.output_dir / "grpo" / "metrics.jsonl")
    first, last = training[min(training)], training[max(training)]
    stages = ", ".join(f"{name.split(' ', 1)[1].split(' (')[0]} {sec:.0f}s" for name, sec in log.seconds.items())
    print(
        f"\nSmoke run (not a demonstration of learning): the AM3 pipeline trained end to end on the CPU in {time.perf_counter() - start:.0f}s ({stages}). "
        f"The tiny Qwen2.5-VL (random weights, real Qwen vocabulary) was cold-start fine-tuned for {cfg.sft_steps} steps "
        f"with verl's sft_trainer, then trained for {len(training)} AM3 GRPO steps by verl's main_ppo "
        f"({cfg.prompts} dialogues x {cfg.rollouts} rollouts a step, judge: {report.judge_line}); the mean reward went "
        f"{first['am3/reward/mean']:.3f} -> {last['am3/reward/mean']:.3f} and the training ASR {first['am3/asr']:.3f} -> "
        f"{last['am3/asr']:.3f}. On the validation dialogues, ASR {report.asr_before} (SFT) -> {report.asr_after} (GRPO). "
        f"Report: {report.path}."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
