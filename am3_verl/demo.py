"""``make demo``: the whole AM3 pipeline on a CPU, on the embedded defaults, every stage real.

1. **data** – the bundled sample (InterSafe-V dialogues, refusal VQA, benign VQA) through the data
   preparation converters into verl parquet;
2. **cold-start SFT** – the 8-GPU cold-start recipe run by ``torchrun`` with verl's ``sft_trainer`` on
   the offline tiny Qwen2.5-VL, with only the CPU, size and device overrides (am3-verl's CPU platform);
3. **rollouts** – from that checkpoint, several whole dialogues per prompt played by the ``am3_dialogue``
   agent loop inside verl's ``AgentLoopWorker``, generation by the local CPU backend;
4. **judging** – every assistant turn scored by the verl reward function (the offline heuristic judge,
   or the OpenAI-compatible judge at ``AM3_JUDGE_BASE_URL``);
5. **advantages** – per-turn scores placed in the token rows (:mod:`am3_verl.turn_scores`) and
   ``am3_grpo`` run through verl's own ``compute_advantage``;
6. **report** – ``results.jsonl``, ``metrics.json`` and ``report.html`` (per-turn scores, alpha,
   advantages, ASR by turn) in ``--output_dir``.

The tiny model has random weights, so its replies are gibberish and the judge's verdicts reflect that;
the demo shows that every stage runs and connects, not a trained model's behaviour. A policy update
(``main_ppo``) needs vLLM/SGLang rollout servers, which need a GPU: the demo stops at the advantages
and says so.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from am3_verl.local.rollout import REPO_ROOT, default_model_dir

SFT_RECIPE = REPO_ROOT / "recipes" / "sft" / "cold_start_qwen2_5_vl_7b_8gpu.sh"
CPU_SFT_OVERRIDES = (
    "trainer.device=cpu",
    "model.use_remove_padding=False",
    "+model.override_config.attn_implementation=sdpa",
    "trainer.logger=[console]",
    "data.use_dynamic_bsz=False",
    "data.micro_batch_size_per_gpu=2",
    "data.num_workers=0",
    # The tiny model has random weights: a larger step than the recipe's makes the loss visibly move in 4 steps.
    "optim.lr=5e-4",
)


@dataclass
class DemoConfig:
    """Embedded CPU defaults of ``make demo`` (each is a command-line flag)."""

    output_dir: Path
    prompts: int = 4
    """Dialogues (prompts) rolled out, from the validation split."""
    rollouts: int = 4
    """Rollouts per prompt (the GRPO group size; the paper uses 8)."""
    sft_steps: int = 4
    sft_batch_size: int = 4
    max_reply_tokens: int = 24
    response_length: int = 640
    prompt_length: int = 512
    seed: int = 0


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
    ckpt_dir = cfg.output_dir / "sft"
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "DATA_DIR": str(data_dir),
        "MODEL_PATH": str(base_model),
        "CKPT_DIR": str(ckpt_dir),
        "NPROC_PER_NODE": "1",
        "VERL_PLATFORM": "cpu",
    }
    command = [
        "bash", str(SFT_RECIPE), *CPU_SFT_OVERRIDES,
        f"data.train_batch_size={cfg.sft_batch_size}", f"trainer.total_training_steps={cfg.sft_steps}",
        f"trainer.save_freq={cfg.sft_steps}", "trainer.total_epochs=100", "data.max_length=1024",
    ]  # fmt: skip
    print("$ " + " ".join(command), flush=True)
    log_path = cfg.output_dir / "sft.log"
    with open(log_path, "w") as log:
        process = subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=cfg.output_dir)
    log_text = log_path.read_text()
    losses = re.findall(r"step:(\d+) .*?train/loss:([0-9.]+)", log_text)
    for step, loss in losses:
        print(f"   SFT step {step}: loss {float(loss):.4f}")
    if process.returncode != 0:
        raise RuntimeError(f"cold-start SFT failed (exit {process.returncode}); see {log_path}")
    hf_dir = ckpt_dir / f"global_step_{cfg.sft_steps}" / "huggingface"
    if not (hf_dir / "config.json").is_file():
        raise RuntimeError(f"cold-start SFT wrote no Hugging Face folder at {hf_dir}; see {log_path}")
    return hf_dir


def rollout(cfg: DemoConfig, data_dir: Path, model_dir: Path):
    """Play ``prompts x rollouts`` whole dialogues with the SFT model; return (batch, dataset)."""
    import yaml

    from am3_verl.local.generation import load_local_client
    from am3_verl.local.rollout import compose_ppo_config, load_rl_dataset, make_agent_loop_worker, rollout_batch

    loops = cfg.output_dir / "agent_loops.yaml"
    loops.write_text(
        yaml.safe_dump([{"name": "am3_dialogue", "_target_": "am3_verl.env.agent_loop.DialogueAgentLoop",
                         "max_reply_tokens": cfg.max_reply_tokens}])
    )  # fmt: skip
    config = compose_ppo_config(
        model_dir, prompt_length=cfg.prompt_length, response_length=cfg.response_length, agent_loop_config_path=loops
    )
    dataset = load_rl_dataset([data_dir / "rl_val.parquet"], config)
    client = load_local_client(str(model_dir), seed=cfg.seed)
    worker = make_agent_loop_worker(config, client)
    indices = list(range(min(cfg.prompts, len(dataset))))
    batch = rollout_batch(dataset, indices, n=cfg.rollouts)
    total = len(batch)
    with tqdm(total=total, desc="dialogues", unit="dlg") as bar:
        # one prompt group at a time, so the bar moves; each group's rollouts run concurrently
        outputs = []
        for start in range(0, total, cfg.rollouts):
            outputs.append(asyncio.run(worker.generate_sequences(batch[start : start + cfg.rollouts])))
            bar.update(cfg.rollouts)
    from verl import DataProto

    output = DataProto.concat(outputs)
    output.non_tensor_batch["uid"] = batch.non_tensor_batch["uid"]
    turns = sum(len(t) for t in output.non_tensor_batch["am3_turns"])
    print(f"   {len(output)} dialogues, {turns} assistant turns, {len(client.calls)} generate calls")
    return output


def judge(output) -> list[dict[str, Any]]:
    """Score every turn with the verl reward function; returns one reward dict per dialogue, in order.

    ``extra_info`` is built the way verl's reward managers build it: the dataset's ``extra_info`` plus
    the agent loop's ``extra_fields``.
    """
    from am3_verl.judges.reward import compute_score

    async def score(i: int) -> tuple[int, dict[str, Any]]:
        extra_info = dict(output.non_tensor_batch["extra_info"][i])
        for key in ("am3_turns", "am3_dialogue"):
            extra_info[key] = output.non_tensor_batch[key][i]
        reward = await compute_score(
            data_source=output.non_tensor_batch["data_source"][i],
            solution_str="",
            ground_truth=output.non_tensor_batch["reward_model"][i].get("ground_truth"),
            extra_info=extra_info,
        )
        return i, reward

    async def score_all() -> list[dict[str, Any]]:
        results: dict[int, dict[str, Any]] = {}
        tasks = [score(i) for i in range(len(output))]
        for finished in tqdm(asyncio.as_completed(tasks), total=len(tasks), desc="judging", unit="dlg"):
            i, reward = await finished
            results[i] = reward
        return [results[i] for i in range(len(output))]

    rewards = asyncio.run(score_all())
    backend = "OpenAI-compatible judge at AM3_JUDGE_BASE_URL" if os.environ.get("AM3_JUDGE_BASE_URL") else "offline heuristic judge"
    failures = sum(int(r["judge_failures"]) for r in rewards)
    print(f"   {sum(int(r['num_judged_turns']) for r in rewards)} turns judged by the {backend}; {failures} judge failures")
    return rewards


def judgments_with_rationales(output) -> list[list[Any]]:
    """The judge's per-turn verdicts (with rationales) for every dialogue; served from the judge's cache."""
    from am3_verl.judges.base import requests_from_turns, turns_from_records
    from am3_verl.judges.config import get_judge, resolve_judge_config

    judge = get_judge(resolve_judge_config({}))

    async def all_dialogues():
        return [
            await judge.judge_many(requests_from_turns(turns_from_records(records)))
            for records in output.non_tensor_batch["am3_turns"]
        ]

    return asyncio.run(all_dialogues())


def advantages(cfg: DemoConfig, output, rewards: list[dict[str, Any]], am3_overrides: list[str]):
    """Place the per-turn scores in the token rows and run ``am3_grpo`` through verl's ``compute_advantage``.

    Returns ``(advantages [B, L], alpha [B, T], token_level_rewards [B, L])``.
    """
    from verl.trainer.ppo.ray_trainer import compute_advantage

    from am3_verl.advantage.config import resolve_am3_config
    from am3_verl.advantage.estimator import compute_am3
    from am3_verl.local.rollout import compose_ppo_config, default_model_dir
    from am3_verl.turn_scores import encode_row, load_turn_scores

    mask = output.batch["response_mask"]
    rows = [encode_row(mask[i], load_turn_scores(rewards[i]["am3_turn_scores"])) for i in range(len(output))]
    output.batch["token_level_rewards"] = torch.stack(rows)
    algorithm = compose_ppo_config(default_model_dir(), overrides=["algorithm.adv_estimator=am3_grpo", *am3_overrides]).algorithm
    data = compute_advantage(output, adv_estimator=algorithm.adv_estimator, config=algorithm)
    computation = compute_am3(
        data.batch["token_level_rewards"], mask.bool(), data.non_tensor_batch["uid"], resolve_am3_config(algorithm)
    )
    return data.batch["advantages"], computation.turns.weights, data.batch["token_level_rewards"]


def write_results(cfg: DemoConfig, output, rewards, verdicts, advantage, alpha) -> Path:
    """Write the rollouts as an evaluation results folder (``results.jsonl`` + images), alpha and advantage per turn."""
    from am3_verl.eval.results import ResultItem, ResultTurn, Verdict, store_image
    from am3_verl.eval.results import write_results as write_results_file

    results_dir = cfg.output_dir / "report"
    results_dir.mkdir(parents=True, exist_ok=True)
    mask = output.batch["response_mask"]
    items = []
    for i in range(len(output)):
        info = dict(output.non_tensor_batch["extra_info"][i])
        turns = []
        for t, (record, verdict) in enumerate(zip(output.non_tensor_batch["am3_turns"][i], verdicts[i])):
            start, end = record["span"]
            turns.append(
                ResultTurn(
                    index=t,
                    user_text=record["user_text"],
                    images=[store_image(results_dir, data) for data in record["user_images"]],
                    reply=record["reply"],
                    verdict=Verdict(failed=True, rationale=verdict.rationale or "", error=verdict.error)
                    if verdict.failed
                    else Verdict(harmless=verdict.harmless, helpful=verdict.helpful, refused=bool(verdict.refused), rationale=verdict.rationale or ""),
                    extras={
                        "alpha": round(float(alpha[i, t]), 4),
                        "advantage": round(float(advantage[i, start:end].mean()), 4),
                        "reply_tokens": float(mask[i, start:end].sum()),
                    },
                )
            )
        items.append(
            ResultItem(
                uid=f"{output.non_tensor_batch['uid'][i]}#rollout{i % cfg.rollouts}",
                id=f"{info['id']}#rollout{i % cfg.rollouts}",
                data_source=str(output.non_tensor_batch["data_source"][i]),
                category=str(info.get("category", "unknown")),
                harmful=bool(info.get("harmful", True)),
                mode="interactive",
                turns=turns,
                meta={"score": float(rewards[i]["score"]), "stop_reason": output.non_tensor_batch["am3_dialogue"][i]["stop_reason"]},
            )
        )
    write_results_file(results_dir, items)
    return results_dir


def main(argv: list[str] | None = None) -> int:
    """Run the demo; returns the process exit code."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", default="outputs/demo", help="where data, checkpoint and report go")
    parser.add_argument("--prompts", type=int, default=DemoConfig.prompts, help="dialogues rolled out")
    parser.add_argument("--rollouts", type=int, default=DemoConfig.rollouts, help="rollouts per dialogue (group size)")
    parser.add_argument("--sft_steps", type=int, default=DemoConfig.sft_steps, help="cold-start SFT steps")
    parser.add_argument("--max_reply_tokens", type=int, default=DemoConfig.max_reply_tokens, help="tokens per reply")
    parser.add_argument("--seed", type=int, default=DemoConfig.seed)
    parser.add_argument(
        "--am3", action="append", default=[], metavar="KEY=VALUE",
        help="AM3 advantage setting, e.g. --am3 tau=0.6 (becomes +algorithm.am3.KEY=VALUE)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    cfg = DemoConfig(
        output_dir=Path(args.output_dir).resolve(),
        prompts=args.prompts,
        rollouts=args.rollouts,
        sft_steps=args.sft_steps,
        max_reply_tokens=args.max_reply_tokens,
        seed=args.seed,
    )
    cfg.output_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    log = StageLog()
    start = time.perf_counter()

    from am3_verl.eval.report import write_report
    from am3_verl.local.tiny_models import build_all

    base_model = build_all(default_model_dir().parent)["qwen2_5_vl"]
    data_dir = log.run("1/6 data preparation", prepare_data, cfg)
    model_dir = log.run("2/6 cold-start SFT (verl sft_trainer, CPU)", cold_start_sft, cfg, data_dir, base_model)
    output = log.run("3/6 rollouts (am3_dialogue in verl's AgentLoopWorker)", rollout, cfg, data_dir, model_dir)
    rewards = log.run("4/6 judging every turn", judge, output)
    verdicts = judgments_with_rationales(output)
    am3_overrides = [f"+algorithm.am3.{kv}" for kv in args.am3]
    advantage, alpha, _ = log.run("5/6 am3_grpo advantages (verl compute_advantage)", advantages, cfg, output, rewards, am3_overrides)
    report = log.run(
        "6/6 report",
        lambda: write_report(write_results(cfg, output, rewards, verdicts, advantage, alpha), title="am3-verl CPU demo"),
    )

    judged = [r for r in rewards if r["num_judged_turns"]]
    mean = lambda key: float(np.nanmean([r[key] for r in judged])) if judged else float("nan")  # noqa: E731
    stages = ", ".join(f"{name.split(' ', 1)[1].split(' (')[0]} {sec:.0f}s" for name, sec in log.seconds.items())
    print(
        f"\nSummary: the AM3 pipeline ran end to end on the CPU in {time.perf_counter() - start:.0f}s ({stages}). "
        f"The tiny Qwen2.5-VL (random weights, real Qwen vocabulary) was cold-start fine-tuned for {cfg.sft_steps} steps "
        f"with verl's sft_trainer, then played {len(output)} dialogues ({cfg.prompts} prompts x {cfg.rollouts} rollouts, "
        f"{sum(len(t) for t in output.non_tensor_batch['am3_turns'])} assistant turns) through the am3_dialogue agent loop; "
        f"the judge scored mean harmless {mean('harmless'):.2f}, helpful {mean('helpful'):.2f}, ASR {mean('asr'):.2f}, "
        f"and am3_grpo turned the per-turn scores into advantages (alpha per turn shown in the report). "
        f"No policy update was run: main_ppo needs vLLM/SGLang rollout servers, which need a GPU. "
        f"Report: {report.report_path} (metrics: {report.metrics_path})."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
