"""Benchmark: one AM3 GRPO step of ``main_ppo`` on the CPU against the same work done directly in one process.

Ours: ``recipes/grpo/am3_grpo_tiny_cpu.sh`` (tiny Qwen2.5-VL, 2 dialogues x 4 rollouts, replies capped at
24 tokens, the offline heuristic judge so no judge latency enters either side) for ``--steps`` steps;
the step's split comes from verl's own ``timing_s/*`` metrics (generation includes the streamed reward),
averaged over the steps after the first (warm-up).

Baseline, same run, same machine, one process, no Ray: the same dialogues played by the same agent loop
in verl's ``AgentLoopWorker`` with the local generation backend (HF ``generate``), the reward function
called directly, then the model's own forward passes on the resulting batch with its all-padding columns
dropped: old log-probs with the token entropy (verl always computes it there) and reference log-probs (no
grad, one batch of 8 like the recipe's log-prob micro-batch), and the update (forward + backward over micro-batches
of 4, one AdamW step; the output head only at the response mask's positions, as am3-verl's CPU engine runs it,
:mod:`am3_verl.compat.loss_positions_head`). Weight sync costs nothing there (one model). The two sides sample their own dialogues, so their turn counts differ a
little from step to step (both are printed).

vLLM column, same run: the recipe with verl's vLLM rollout (``actor_rollout_ref.rollout.name=vllm``, from the
vLLM CPU environment ``.venv-vllm`` first on PATH) against the recipe with the ``hf`` rollout, both on the
head-dim-32 tiny model vLLM's CPU attention serves (``qwen2_5_vl_h128``), so the two rollouts do the same
work. It reports each side's step split and the vLLM/hf ratios; no target (it is a comparison of two
rollout engines on 2 cores, not of am3-verl's overhead). ``--no_vllm`` skips it.

Two policy sizes, each side at each: the test model (``qwen2_5_vl``: hidden 64, 2 layers), where verl's fixed
per-call costs dominate a step, and the miniature's policy (hidden 128, 4 layers, vision hidden 64, built
as :mod:`am3_verl.miniature` builds it), whose steps the miniature experiment pays for. At the miniature's
size ours also runs once with verl's own engine (``AM3_CPU_FULL_LM_HEAD=1``: the output head at every
position), to show what the CPU engine saves.

Targets, at the miniature's size: ours / baseline per step <= 1.5; weight sync < 10% of our step. The test
model's ratio is reported beside it.
Run: ``.venv/bin/python tests/benchmarks/bench_ppo_step.py [--steps N] [--no_vllm]``; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from am3_verl.compat.cpu import FULL_LM_HEAD_ENV

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "recipes" / "grpo" / "am3_grpo_tiny_cpu.sh"
TINY_LOOPS = REPO / "recipes" / "agent_loops" / "am3_dialogue_tiny.yaml"
PROMPTS, ROLLOUTS, PROMPT_LENGTH, RESPONSE_LENGTH = 2, 4, 512, 640
SPLIT = ("gen", "old_log_prob", "ref", "adv", "update_actor", "update_weights")
VLLM_VENV = Path(os.environ.get("AM3_VLLM_VENV", REPO / ".venv-vllm"))


def prepare_data(out: Path) -> Path:
    from am3_verl.data.intersafe_v import main as intersafe_v
    from am3_verl.data.sample import SAMPLE_DIR

    intersafe_v(["--input", str(SAMPLE_DIR / "intersafe_v.jsonl"), "--output_dir", str(out), "--val_size", "8", "--no_progress"])
    return out


def ours(data_dir: Path, model_dir: Path, workdir: Path, steps: int, rollout: str = "hf", full_head: bool = False) -> dict[str, float]:
    """Mean ``timing_s/*`` of main_ppo steps 2..steps with the ``rollout`` backend (``vllm`` runs from .venv-vllm);
    ``full_head``: with verl's own engine (the output head at every position) instead of am3-verl's CPU engine."""
    workdir.mkdir(parents=True, exist_ok=True)
    metrics_file = workdir / "metrics.jsonl"
    env = {**os.environ, "DATA_DIR": str(data_dir), "MODEL_PATH": str(model_dir), "CKPT_DIR": str(workdir / "ckpt"),
           "AM3_JUDGE_BACKEND": "heuristic", "VERL_FILE_LOGGER_PATH": str(metrics_file)}  # fmt: skip
    if full_head:
        env[FULL_LM_HEAD_ENV] = "1"
    if rollout == "vllm":
        env["PATH"] = f"{VLLM_VENV / 'bin'}{os.pathsep}{env['PATH']}"
    command = ["bash", str(RECIPE), f"actor_rollout_ref.rollout.name={rollout}", f"trainer.total_training_steps={steps}",
               "trainer.save_freq=-1", "trainer.test_freq=-1", "trainer.logger=[console,file]"]  # fmt: skip
    with open(workdir / "main_ppo.log", "w") as log:
        subprocess.run(command, env=env, cwd=workdir, stdout=log, stderr=subprocess.STDOUT, check=True, timeout=1800)
    from am3_verl.demo_report import read_step_metrics

    timed = [metrics for step, metrics in read_step_metrics(metrics_file).items() if step >= 2]
    out = {key: statistics.mean(r[f"timing_s/{key}"] for r in timed) for key in (*SPLIT, "step")}
    out["turns_per_dialogue"] = statistics.mean(r["am3/assistant_turns/mean"] for r in timed)
    return out


def baseline(data_dir: Path, model_dir: Path, steps: int) -> dict[str, float]:
    """The same work per step done directly: agent-loop generation, reward, two no-grad passes, one update."""
    from transformers import AutoModelForImageTextToText
    from verl.utils.model import extract_multi_modal_inputs

    from am3_verl.judges.reward import compute_score
    from am3_verl.local.generation import load_local_client
    from am3_verl.local.rollout import compose_ppo_config, load_rl_dataset, make_agent_loop_worker, rollout_batch

    config = compose_ppo_config(model_dir, prompt_length=PROMPT_LENGTH, response_length=RESPONSE_LENGTH,
                                agent_loop_config_path=TINY_LOOPS)  # fmt: skip
    dataset = load_rl_dataset([data_dir / "rl_train.parquet"], config)
    client = load_local_client(str(model_dir), seed=0)
    worker = make_agent_loop_worker(config, client)
    model = client.model  # the policy generates and trains in the same process: no weight sync
    reference = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32).eval()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def log_probs(net, batch, rows, entropy: bool = False, at_loss_positions: bool = False):
        # Like verl's engine, drop the padding columns no row uses (prompts are left-, responses right-padded).
        attention = batch.batch["attention_mask"][rows]
        keep_prompt = int(attention[:, :PROMPT_LENGTH].sum(1).max())
        keep_response = int(attention[:, PROMPT_LENGTH:].sum(1).max())
        cols = slice(PROMPT_LENGTH - keep_prompt, PROMPT_LENGTH + keep_response)
        mm = extract_multi_modal_inputs([batch.non_tensor_batch["multi_modal_inputs"][i] for i in rows])
        inputs = {"input_ids": batch.batch["input_ids"][rows][:, cols], "attention_mask": attention[:, cols],
                  "position_ids": batch.batch["position_ids"][rows][..., cols].transpose(0, 1), **mm}  # fmt: skip
        responses = batch.batch["responses"][rows][:, :keep_response]
        if at_loss_positions:  # the output head only where the loss reads, as am3-verl's CPU engine runs it
            hidden = net.model(**inputs)[0][:, -keep_response - 1 : -1]
            mask = batch.batch["response_mask"][rows][:, :keep_response].bool()
            picked = torch.log_softmax(net.lm_head(hidden[mask]).float(), -1).gather(-1, responses[mask][:, None]).squeeze(-1)
            return torch.zeros(mask.shape).index_put(mask.nonzero(as_tuple=True), picked)
        logits = net(**inputs).logits[:, -keep_response - 1 : -1].float()
        if entropy:  # verl's old-log-prob pass always computes the token entropy too (trainer_base.py:1653)
            (torch.logsumexp(logits, -1) - (torch.softmax(logits, -1) * logits).sum(-1)).mean().item()
        return torch.log_softmax(logits, -1).gather(-1, responses[..., None]).squeeze(-1)

    async def judge(batch):
        return await asyncio.gather(*[
            compute_score(data_source=batch.non_tensor_batch["data_source"][i], solution_str="", ground_truth=None,
                          extra_info={**batch.non_tensor_batch["extra_info"][i], "am3_turns": batch.non_tensor_batch["am3_turns"][i],
                                      "am3_dialogue": batch.non_tensor_batch["am3_dialogue"][i]}, backend="heuristic")
            for i in range(len(batch))
        ])  # fmt: skip

    per_step = []
    for step in range(steps):
        times = {}
        start = time.perf_counter()
        indices = [(step * PROMPTS + k) % len(dataset) for k in range(PROMPTS)]
        batch = asyncio.run(worker.generate_sequences(rollout_batch(dataset, indices, n=ROLLOUTS)))
        times["gen"] = time.perf_counter() - start
        mark = time.perf_counter()
        asyncio.run(judge(batch))
        times["reward"] = time.perf_counter() - mark
        rows = list(range(len(batch)))
        mark = time.perf_counter()
        with torch.no_grad():
            model.eval()
            log_probs(model, batch, rows, entropy=True)
        times["old_log_prob"] = time.perf_counter() - mark
        mark = time.perf_counter()
        with torch.no_grad():
            log_probs(reference, batch, rows)
        times["ref"] = time.perf_counter() - mark
        mark = time.perf_counter()
        model.train()
        optimizer.zero_grad()
        mask = batch.batch["response_mask"].float()
        for micro in (rows[:4], rows[4:]):
            lp = log_probs(model, batch, micro, at_loss_positions=True)
            loss = -(lp * mask[micro][:, : lp.shape[1]]).sum() / mask.sum()
            loss.backward()
        optimizer.step()
        model.eval()
        times["update_actor"] = time.perf_counter() - mark
        times["step"] = time.perf_counter() - start
        times["turns_per_dialogue"] = statistics.mean(len(t) for t in batch.non_tensor_batch["am3_turns"])
        per_step.append(times)
    timed = per_step[1:] or per_step
    return {key: statistics.mean(t[key] for t in timed) for key in timed[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=4, help="steps per side; the first is warm-up (default 4)")
    parser.add_argument("--no_vllm", action="store_true", help="skip the vLLM column (needs .venv-vllm, `make setup-vllm`)")
    args = parser.parse_args()
    from am3_verl.local.rollout import default_model_dir
    from am3_verl.local.tiny_models import build_all, build_tiny_qwen2_5_vl
    from am3_verl.miniature.experiment import MiniatureConfig

    models = build_all(default_model_dir().parent)
    rounded = lambda split: {k: round(v, 3) for k, v in split.items()}  # noqa: E731
    vllm_column = None
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data_dir = prepare_data(tmp / "data")
        size = MiniatureConfig(output_dir=tmp)
        miniature_model = build_tiny_qwen2_5_vl(tmp / "miniature_model", seed=0, hidden_size=size.hidden_size,
                                                num_layers=size.num_layers, vision_hidden_size=size.vision_hidden_size)  # fmt: skip
        test_ours = ours(data_dir, models["qwen2_5_vl"], tmp / "run", args.steps)
        test_base = baseline(data_dir, models["qwen2_5_vl"], args.steps)
        ours_s = ours(data_dir, miniature_model, tmp / "run-miniature", args.steps)
        full_head_s = ours(data_dir, miniature_model, tmp / "run-miniature-full-head", args.steps, full_head=True)
        base_s = baseline(data_dir, miniature_model, args.steps)
        if not args.no_vllm:
            hf_s = ours(data_dir, models["qwen2_5_vl_h128"], tmp / "run-hf-h128", args.steps)
            vllm_s = ours(data_dir, models["qwen2_5_vl_h128"], tmp / "run-vllm-h128", args.steps, rollout="vllm")
            vllm_column = {"model": "tiny qwen2_5_vl_h128", "hf_s": rounded(hf_s), "vllm_s": rounded(vllm_s),
                           "vllm_over_hf": {k: round(vllm_s[k] / hf_s[k], 3) for k in ("gen", "update_weights", "step")}}  # fmt: skip
    ratio = ours_s["step"] / base_s["step"]
    test_ratio = test_ours["step"] / test_base["step"]
    sync_share = ours_s["update_weights"] / ours_s["step"]
    verdict = "met" if ratio <= 1.5 and sync_share < 0.10 else "missed"
    print(f"miniature policy (h{size.hidden_size} x {size.num_layers} layers): main_ppo step {ours_s['step']:.2f}s vs direct "
          f"{base_s['step']:.2f}s (ratio {ratio:.2f}, target <= 1.5); weight sync {100 * sync_share:.1f}% of the step "
          f"(target < 10%): {verdict}")  # fmt: skip
    print(f"miniature policy with verl's own engine (output head at every position): step {full_head_s['step']:.2f}s, "
          f"update {full_head_s['update_actor']:.2f}s; am3-verl's CPU engine: update {ours_s['update_actor']:.2f}s")  # fmt: skip
    print(
        f"test model (h64 x 2 layers): main_ppo step {test_ours['step']:.2f}s vs direct {test_base['step']:.2f}s (ratio {test_ratio:.2f})"
    )
    if vllm_column:
        print(f"head-dim-32 model: vLLM rollout step {vllm_column['vllm_s']['step']:.2f}s (generation {vllm_column['vllm_s']['gen']:.2f}s) "
              f"vs hf rollout {vllm_column['hf_s']['step']:.2f}s ({vllm_column['hf_s']['gen']:.2f}s)")  # fmt: skip
    print(json.dumps({
        "benchmark": "ppo_step", "model": f"miniature qwen2_5_vl h{size.hidden_size}x{size.num_layers}",
        "dialogues_x_rollouts": f"{PROMPTS}x{ROLLOUTS}", "steps_timed": args.steps - 1,
        "ours_s": rounded(ours_s), "baseline_s": rounded(base_s), "ratio": round(ratio, 3),
        "verl_engine_full_head_s": rounded(full_head_s), "test_model": {"model": "tiny qwen2_5_vl h64x2", "ours_s": rounded(test_ours), "baseline_s": rounded(test_base),
                       "ratio": round(test_ratio, 3)}, "weight_sync_share": round(sync_share, 4), "targets": {"ratio": 1.5, "weight_sync_share": 0.10},
        "verdict": verdict, "vllm": vllm_column, "cpu_count": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
