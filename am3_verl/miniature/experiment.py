"""The paper's experiment in miniature, on a CPU, through the real product.

For every seed: generate the task (:mod:`am3_verl.miniature.generate`), convert it with data prep,
build a tiny Qwen2.5-VL from that seed, cold-start SFT it with verl's ``sft_trainer`` on single-turn
refusal and general VQA only, evaluate that checkpoint on the held-out dialogues, then for every
estimator train it with GRPO through ``python -m verl.trainer.main_ppo`` (``am3_dialogue`` rollouts,
the multi-turn reward function, the ``openai`` judge backend) and evaluate the result on the same
held-out dialogues with ``python -m am3_verl.eval``. The judge is the ground-truth server of
:mod:`am3_verl.miniature.judge` on 127.0.0.1, for training and evaluation alike. Every GRPO run dumps
its rollouts' per-turn scores (``trainer.rollout_data_dir``); the ``am3_grpo`` run's are cut into
mixed-length groups to measure the turn-count bias of each estimator
(:mod:`am3_verl.miniature.turn_count_bias`).

Outputs (``--output_dir``): ``results.json`` (:mod:`am3_verl.miniature.results`), ``report.html`` and
``curves.png``, plus every stage's data, checkpoints, logs and evaluation folders under ``seed_<k>/``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from am3_verl import stages
from am3_verl.advantage.turn_score_dump import read_turn_score_dumps
from am3_verl.atomic import write_text_atomic
from am3_verl.demo_report import read_step_metrics
from am3_verl.miniature.generate import generate_task
from am3_verl.miniature.judge import GroundTruthJudgeServer
from am3_verl.miniature.turn_count_bias import measure as measure_turn_count_bias

ESTIMATOR_OVERRIDES: dict[str, tuple[str, ...]] = {
    "am3_grpo": ("algorithm.adv_estimator=am3_grpo", "+algorithm.am3.variant=paper"),
    "grpo": ("algorithm.adv_estimator=grpo",),
    "min_mean": ("algorithm.adv_estimator=am3_grpo", "+algorithm.am3.variant=min_mean"),
}
"""What each compared estimator changes in the tiny CPU recipe (everything else is identical)."""

GRPO_SPEED_OVERRIDES: tuple[str, ...] = (
    # One policy update per step on freshly sampled rollouts: the rollout's own fp32 log-probs are the
    # old log-probs (verl's bypass mode), so the separate old-log-prob pass is skipped.
    "algorithm.rollout_correction.bypass_mode=True",
    # No KL penalty, hence no reference model: the miniature runs few steps from the SFT checkpoint.
    "actor_rollout_ref.actor.use_kl_loss=False",
)
"""Settings that make the miniature's GRPO fast on a CPU; the same for every estimator."""


TURN_COUNT_BIAS_ROLLOUTS = "am3_grpo"
"""The run whose rollouts the turn-count-bias measurement cuts (:mod:`am3_verl.miniature.turn_count_bias`)."""


@dataclass
class MiniatureConfig:
    """The miniature's settings; the defaults are the documented configuration (``make miniature``)."""

    output_dir: Path
    seeds: int = 3
    estimators: tuple[str, ...] = ("am3_grpo", "grpo", "min_mean")
    steps: int = 6
    """GRPO steps per run."""
    prompts: int = 8
    """Dialogues per GRPO step. With 4, a step's update followed whichever dialogues it drew (seed 7's first two
    steps drew no harmful one) and the outcome swung by seed: refusal collapse at 3e-4, no learning at 1.5e-4."""
    rollouts: int = 8
    """Rollouts per dialogue (the GRPO group; the paper's 8)."""
    lr: float = 1.5e-4
    """GRPO learning rate. At 8 dialogues a step, 3e-4 and 2e-4 collapsed some seeds into over-refusal (seed 4:
    +0.25; seed 7 at 2e-4: +0.17); 1e-3 collapses the policy onto one word of the refusal."""
    sft_steps: int = 150
    sft_batch_size: int = 16
    sft_lr: float = 3e-3
    hidden_size: int = 128
    num_layers: int = 4
    vision_hidden_size: int = 64
    """The policy's size: the test model (64 / 2 / 32) learns the reply templates but not to read colours."""
    max_reply_tokens: int = 24
    """Reply cap at evaluation (training: recipes/agent_loops/am3_dialogue_tiny.yaml)."""
    first_seed: int = 0
    cut_probability: float = 0.5
    """Turn-count bias: share of the ``am3_grpo`` run's rollouts cut short to make mixed-length groups."""

    def seed_list(self) -> list[int]:
        """The seeds run, in order."""
        return list(range(self.first_seed, self.first_seed + self.seeds))


@dataclass
class StageClock:
    """Wall seconds per stage kind, summed over seeds and estimators."""

    seconds: dict[str, float] = field(default_factory=dict)

    def add(self, kind: str, started: float) -> None:
        self.seconds[kind] = self.seconds.get(kind, 0.0) + time.perf_counter() - started


def prepare_data(task_dir: Path, data_dir: Path) -> dict[str, Path]:
    """Convert the generated task with data prep; return the parquet inputs of each stage."""
    from am3_verl.data.cold_start import main as cold_start
    from am3_verl.data.intersafe_v import main as intersafe_v

    task = json.loads((task_dir / "task.json").read_text())
    intersafe_v(["--input", str(task_dir / "dialogues_train.jsonl"), "--output_dir", str(data_dir / "train"),
                 "--val_size", "4", "--no_progress"])  # fmt: skip
    # The held-out dialogues are converted on their own: every one lands in that folder's rl_train.parquet.
    intersafe_v(["--input", str(task_dir / "dialogues_heldout.jsonl"), "--output_dir", str(data_dir / "heldout"),
                 "--val_size", "0", "--no_progress"])  # fmt: skip
    ratio = task["counts"]["general"] / task["counts"]["refusal_vqa"]
    cold_start(["--refusal", str(task_dir / "refusal_vqa.jsonl"), "--general", str(task_dir / "general.jsonl"),
                "--general_ratio", f"{ratio:.6f}", "--output_dir", str(data_dir / "sft"), "--no_progress"])  # fmt: skip
    return {"train": data_dir / "train", "heldout": data_dir / "heldout" / "rl_train.parquet", "sft": data_dir / "sft"}


def eval_metrics(results_dir: Path) -> dict:
    """The numbers the miniature reports from one evaluation folder's ``metrics.json``."""
    metrics = json.loads((results_dir / "metrics.json").read_text())
    overall = metrics["overall"]
    return {
        "asr": overall["dialogue_asr"]["value"],
        "turn_asr": overall["asr"]["value"],
        "over_refusal": overall["over_refusal"]["value"],
        "harmless": overall["harmless"]["value"],
        "helpful": overall["helpful"]["value"],
        "refusal_rate_harmful": overall["refusal_rate_harmful"]["value"],
        "asr_by_turn": {t: block["asr"]["value"] for t, block in metrics["by_turn"].items()},
        "n_harmful": overall["dialogue_asr"]["n"],
        "n_benign_turns": overall["over_refusal"]["n"],
    }


def training_curve(run_dir: Path) -> dict[int, dict[str, float]]:
    """Step -> the am3/* training metrics of one GRPO run (from verl's file logger)."""
    keys = ("am3/reward/mean", "am3/harmless/mean", "am3/helpful/mean", "am3/asr", "am3/refusal_rate", "am3/groups/mixed_length_fraction",
            "am3/alpha/nonuniform_group_fraction", "am3/sync/bypass_kl")  # fmt: skip
    return {step: {k.split("/", 1)[1]: m[k] for k in keys if k in m} for step, m in read_step_metrics(run_dir / "metrics.jsonl").items()}


def run_seed(cfg: MiniatureConfig, seed: int, judge: GroundTruthJudgeServer, clock: StageClock) -> list[dict]:
    """Every stage for one seed; returns one record per estimator (before/after metrics and the curve)."""
    from am3_verl.local.tiny_models import build_tiny_qwen2_5_vl

    root = cfg.output_dir / f"seed_{seed}"
    judge_env = {"AM3_JUDGE_BACKEND": "openai", "AM3_JUDGE_BASE_URL": judge.base_url, "AM3_JUDGE_MODEL": judge.model}
    judge_args = ["--judge_backend", "openai", "--judge_base_url", judge.base_url, "--judge_model", judge.model]

    started = time.perf_counter()
    task = generate_task(root / "task", seed)
    data = prepare_data(root / "task", root / "data")
    base_model = build_tiny_qwen2_5_vl(
        root / "base_model", seed=seed, hidden_size=cfg.hidden_size, num_layers=cfg.num_layers, vision_hidden_size=cfg.vision_hidden_size
    )
    clock.add("data and base model", started)

    started = time.perf_counter()
    sft_log = root / "sft" / "sft.log"
    sft_model = stages.cold_start_sft(
        data["sft"],
        base_model,
        root / "sft" / "checkpoints",
        steps=cfg.sft_steps,
        batch_size=cfg.sft_batch_size,
        lr=cfg.sft_lr,
        log_path=sft_log,
        quiet=True,
    )
    clock.add("cold-start SFT", started)
    started = time.perf_counter()
    before_dir = stages.evaluate(data["heldout"], sft_model, root / "eval" / "sft", judge_args=judge_args,
                                 max_tokens=cfg.max_reply_tokens, seed=seed, title=f"seed {seed}: SFT", quiet=True)  # fmt: skip
    clock.add("evaluation", started)
    before = eval_metrics(before_dir)
    print(f"seed {seed}: SFT checkpoint: held-out ASR {before['asr']:.3f}, over-refusal {before['over_refusal']:.3f}, "
          f"helpful {before['helpful']:.3f}", flush=True)  # fmt: skip

    records = []
    for estimator in cfg.estimators:
        started = time.perf_counter()
        run_dir = root / estimator
        model = stages.grpo(
            data["train"], sft_model, run_dir, steps=cfg.steps, prompts=cfg.prompts, rollouts=cfg.rollouts,
            seed=seed, judge_env=judge_env, progress=f"seed {seed} {estimator}",
            overrides=(*ESTIMATOR_OVERRIDES[estimator], *GRPO_SPEED_OVERRIDES, f"actor_rollout_ref.actor.optim.lr={cfg.lr}",
                       f"trainer.experiment_name=miniature_seed{seed}_{estimator}",
                       # verl dumps each step's rollouts there; the am3_* trainer modes add the per-turn scores
                       f"trainer.rollout_data_dir={run_dir / 'rollouts'}"),
        )  # fmt: skip
        clock.add("GRPO (main_ppo)", started)
        started = time.perf_counter()
        after_dir = stages.evaluate(data["heldout"], model, root / "eval" / estimator, judge_args=judge_args,
                                    max_tokens=cfg.max_reply_tokens, seed=seed, title=f"seed {seed}: {estimator}",
                                    quiet=True)  # fmt: skip
        clock.add("evaluation", started)
        after = eval_metrics(after_dir)
        print(f"seed {seed}: {estimator}: held-out ASR {before['asr']:.3f} -> {after['asr']:.3f}, over-refusal "
              f"{before['over_refusal']:.3f} -> {after['over_refusal']:.3f}, helpful {before['helpful']:.3f} -> "
              f"{after['helpful']:.3f}", flush=True)  # fmt: skip
        bias = None
        if estimator == TURN_COUNT_BIAS_ROLLOUTS:
            bias = measure_turn_count_bias(read_turn_score_dumps(run_dir / "rollouts"), cut_probability=cfg.cut_probability, seed=seed)
        records.append(
            {"seed": seed, "estimator": estimator, "before": before, "after": after, "curve": training_curve(run_dir),
             "sft_loss": stages.sft_losses(sft_log), "task": task, "turn_count_bias": bias}
        )  # fmt: skip
    return records


def run(cfg: MiniatureConfig) -> dict:
    """Run the whole miniature; write ``results.json``, ``report.html`` and ``curves.png``; return the results."""
    from am3_verl.miniature.report import write_report
    from am3_verl.miniature.results import build_results

    unknown = [e for e in cfg.estimators if e not in ESTIMATOR_OVERRIDES]
    if unknown:
        raise ValueError(f"unknown estimator(s) {unknown}; choose from {', '.join(ESTIMATOR_OVERRIDES)}")
    cfg.output_dir.mkdir(parents=True, exist_ok=True)
    for name in ("results.json", "report.html", "curves.png"):  # an earlier run's outputs must not outlive a failed rerun
        (cfg.output_dir / name).unlink(missing_ok=True)
    clock = StageClock()
    start = time.perf_counter()
    records: list[dict] = []
    with GroundTruthJudgeServer() as judge:
        for seed in cfg.seed_list():
            records.extend(run_seed(cfg, seed, judge, clock))
        judge_stats = asdict(judge.stats)
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()}
    results = build_results(records, config=config, wall_s=time.perf_counter() - start, stage_seconds=clock.seconds,
                            judge_stats=judge_stats)  # fmt: skip
    write_text_atomic(cfg.output_dir / "results.json", json.dumps(results, indent=2, sort_keys=True) + "\n")
    write_report(results, cfg.output_dir)
    return results


def main(argv: list[str] | None = None) -> int:
    """Command line of ``python -m am3_verl.miniature``; returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m am3_verl.miniature", description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", required=True, type=Path, help="where results.json, report.html and every stage go")
    parser.add_argument("--seeds", type=int, default=MiniatureConfig.seeds, help="number of seeds (default 3)")
    parser.add_argument("--first_seed", type=int, default=MiniatureConfig.first_seed, help="the first seed (default 0)")
    parser.add_argument(
        "--estimators",
        default=",".join(MiniatureConfig.estimators),
        help=f"comma-separated, from {', '.join(ESTIMATOR_OVERRIDES)} (default: all three)",
    )
    parser.add_argument("--steps", type=int, default=MiniatureConfig.steps, help="GRPO steps per run")
    parser.add_argument("--prompts", type=int, default=MiniatureConfig.prompts, help="dialogues per GRPO step")
    parser.add_argument("--rollouts", type=int, default=MiniatureConfig.rollouts, help="rollouts per dialogue")
    parser.add_argument("--lr", type=float, default=MiniatureConfig.lr, help="GRPO learning rate")
    parser.add_argument("--sft_steps", type=int, default=MiniatureConfig.sft_steps, help="cold-start SFT steps")
    parser.add_argument(
        "--cut_probability",
        type=float,
        default=MiniatureConfig.cut_probability,
        help="turn-count bias: share of the am3_grpo rollouts cut short into mixed-length groups (default 0.5)",
    )
    args = parser.parse_args(argv)
    cfg = MiniatureConfig(
        output_dir=args.output_dir.resolve(), seeds=args.seeds, first_seed=args.first_seed,
        estimators=tuple(e.strip() for e in args.estimators.split(",") if e.strip()), steps=args.steps,
        prompts=args.prompts, rollouts=args.rollouts, lr=args.lr, sft_steps=args.sft_steps,
        cut_probability=args.cut_probability,
    )  # fmt: skip
    results = run(cfg)
    print(json.dumps(results["summary"], indent=2, sort_keys=True))
    print(f"Wall time {results['wall_s']:.0f}s. Report: {cfg.output_dir / 'report.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
