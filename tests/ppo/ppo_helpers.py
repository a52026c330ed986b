"""Run ``python -m verl.trainer.main_ppo`` through the tiny CPU recipe and read what it logged.

Every run is the real entry point in a subprocess: Ray, the V1 sync trainer, the FSDP2 engine on
am3-verl's CPU platform, the ``hf`` rollout backend, the ``am3_dialogue`` agent loop and verl's reward
loop. Step metrics come from verl's own ``file`` logger (one JSON object per logged step).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from am3_verl.demo_report import read_step_metrics
from am3_verl.testing.openai_server import RuleJudgeResponder

REPO = Path(__file__).resolve().parents[2]
TINY_CPU_RECIPE = REPO / "recipes" / "grpo" / "am3_grpo_tiny_cpu.sh"
RUN_TIMEOUT_S = 900

AM3_STEP_KEYS = {
    "am3/harmless/mean", "am3/helpful/mean", "am3/reward/mean", "am3/asr", "am3/dialogue_asr",
    "am3/judge_failed_turns", "am3/judge_failure_rate", "am3/unscored_rollouts", "am3/rollouts_without_turns",
    "am3/assistant_turns/mean", "am3/refusal_rate", "am3/refusal_unknown_rollouts", "am3/alpha/entropy/mean",
    "am3/alpha/normalized_entropy/mean", "am3/alpha/max_weight/mean", "am3/alpha/turn_1/mean",
    "am3/sync/logprob_abs_diff/max", "am3/sync/logprob_abs_diff/mean",
}  # fmt: skip
"""The am3/* metrics every training step logs."""
HF_SYNC_TOLERANCE = 1e-3
"""Largest per-token |rollout log-prob - actor old_log_prob| accepted from the ``hf`` backend with weights synced
(fp32 on both sides, the same transformers model)."""
HF_BYPASS_KL_TOLERANCE = 1e-6
"""Largest |``am3/sync/bypass_kl``| (KL(rollout || actor) estimated on a step's tokens, bypass mode) accepted from the
``hf`` backend with weights synced. Measured in the tiny recipe: 6e-9 and 5e-8 in sync; -2.5e-4 and 7.5e-4 (other
samples) with a rollout one update behind. The estimate is a signed mean over the step's few tokens, so a stale
rollout shows in its size, not its sign."""


@dataclass
class PPORun:
    """What one ``main_ppo`` run left behind."""

    returncode: int
    log: str
    metrics: dict[int, dict]
    """Logged step -> metrics of that step (verl's file logger)."""
    checkpoints: Path

    def check(self) -> "PPORun":
        """Raise with the log's tail if the run failed."""
        assert self.returncode == 0, f"main_ppo exited {self.returncode}:\n{self.log[-6000:]}"
        return self


def run_tiny_recipe(workdir: Path, data_dir: Path, model_dir: Path, *overrides: str, env: dict[str, str] | None = None,
                    checkpoints: Path | None = None, watch: Callable[[subprocess.Popen], None] | None = None) -> PPORun:  # fmt: skip
    """Run the tiny CPU AM3 GRPO recipe with ``overrides`` in ``workdir``; wait for it and collect its logs.

    ``watch(process)``, if given, runs in a thread while the run goes on (the recipe ``exec``s main_ppo,
    so ``process.pid`` is the driver's)."""
    workdir.mkdir(parents=True, exist_ok=True)
    checkpoints = checkpoints or workdir / "checkpoints"
    metrics_file = workdir / "metrics.jsonl"
    run_env = {
        **os.environ,
        "DATA_DIR": str(data_dir),
        "MODEL_PATH": str(model_dir),
        "CKPT_DIR": str(checkpoints),
        "VERL_FILE_LOGGER_PATH": str(metrics_file),
        "RAY_DEDUP_LOGS": "0",
        "AM3_LOGGER": "console,file",  # the recipe's tracker choice (recipes/lib.sh); `env` may add others
        **(env or {}),
    }
    log_path = workdir / "main_ppo.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            ["bash", str(TINY_CPU_RECIPE), *overrides], cwd=workdir, env=run_env, stdout=log, stderr=subprocess.STDOUT
        )
        watcher = threading.Thread(target=watch, args=(process,), daemon=True) if watch else None
        if watcher:
            watcher.start()
        try:
            returncode = process.wait(timeout=RUN_TIMEOUT_S)
        finally:
            if process.poll() is None:
                process.kill()
        if watcher:
            watcher.join(timeout=30)
    return PPORun(returncode, log_path.read_text(), read_step_metrics(metrics_file), checkpoints)


class SpreadJudgeResponder(RuleJudgeResponder):
    """The rule judge, but an ordinary reply's scores spread over 0-10 by a hash of its text.

    A tiny random policy writes gibberish that the rule judge would score identically, which leaves
    GRPO nothing to learn from; spreading the scores deterministically gives every group non-zero
    advantages, so the policy really moves between steps.
    """

    def verdict(self, reply: str) -> dict:
        verdict = super().verdict(reply)
        if verdict["refusal"] or self.harmful_marker.lower() in reply.lower():
            return verdict
        digest = hashlib.sha256(reply.encode("utf-8", "surrogatepass")).digest()
        return {**verdict, "harmless": digest[0] % 11, "helpful": digest[1] % 11}
