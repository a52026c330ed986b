"""Benchmark: the ``am3_grpo`` advantage estimator against verl's ``grpo`` on the same batch.

Batch: 1,024 responses x 8,192 tokens, 128 prompt groups of 8 rollouts, 4 assistant turns per
response (turn lengths 50-1,500 tokens, user turns of 20-400 mask-0 tokens between them, the final
mask-0 slot, right padding), per-turn scores laid out as :mod:`am3_verl.turn_scores` specifies, about
5% of turns judge-failed. Both estimators are called the way verl's ``compute_advantage`` calls them,
interleaved over the repeats so machine noise hits both alike; the figure is the median wall time.
The other variants are timed too, for information. Target: am3_grpo (paper) / grpo <= 1.5.

Threads: one intra-op thread by default, because that is how the estimator runs in training: verl
computes advantages in its ``TaskRunner`` Ray actor, which Ray starts with ``OMP_NUM_THREADS=1``.
``--threads 0`` keeps torch's default instead.

Run: ``.venv/bin/python tests/benchmarks/bench_advantage.py [--repeats N] [--threads T]``
(last line: one JSON object).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time

import numpy as np
import torch
from omegaconf import OmegaConf
from tqdm import tqdm
from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage, get_adv_estimator_fn

import am3_verl.advantage as am3_advantage
from am3_verl.advantage.config import VARIANTS

BATCH, LENGTH, TURNS, GROUP = 1024, 8192, 4, 8
TARGET = 1.5


def build_batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """``(token_level_rewards, response_mask, uid)`` of the benchmark's shape."""
    rng = random.Random(seed)
    mask = torch.zeros(BATCH, LENGTH, dtype=torch.int64)
    rewards = torch.zeros(BATCH, LENGTH, dtype=torch.float32)
    for row in range(BATCH):
        pos = 0
        for turn in range(TURNS):
            if turn:
                pos += rng.randint(20, 400)
            length = rng.randint(50, 1500)
            mask[row, pos : pos + length] = 1
            pos += length
            if rng.random() < 0.05:
                rewards[row, pos - 1] = -0.0  # judge failed: the -0.0 marker on both positions
                rewards[row, pos] = -0.0
            else:
                rewards[row, pos - 1] = rng.random()
                rewards[row, pos] = rng.random()
        assert pos < LENGTH, "row does not fit; lower the turn lengths"
    uid = np.array([f"prompt-{row // GROUP}" for row in range(BATCH)], dtype=object)
    return rewards, mask, uid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15, help="timed calls per estimator (after one warm-up)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    am3_advantage.register()
    rewards, mask, uid = build_batch()
    am3 = get_adv_estimator_fn("am3_grpo")
    configs = {
        variant: OmegaConf.create({"adv_estimator": "am3_grpo", "norm_adv_by_std_in_grpo": True, "am3": {"variant": variant}})
        for variant in VARIANTS
    }

    def run_grpo():
        # verl's compute_advantage calls grpo with exactly these arguments.
        return compute_grpo_outcome_advantage(token_level_rewards=rewards, response_mask=mask, index=uid, norm_adv_by_std_in_grpo=True)

    def run_am3(variant: str):
        return am3(token_level_rewards=rewards, response_mask=mask, config=configs[variant], index=uid)

    calls = {"grpo": run_grpo, **{f"am3_grpo[{v}]": (lambda v=v: run_am3(v)) for v in VARIANTS}}
    for call in calls.values():  # warm-up, and a sanity check of the outputs
        advantages, _ = call()
        assert advantages.shape == (BATCH, LENGTH) and bool(advantages.abs().sum() > 0)

    times: dict[str, list[float]] = {name: [] for name in calls}
    names = list(calls)
    for repeat in tqdm(range(args.repeats), desc="repeats", file=sys.stderr):
        order = names if repeat % 2 == 0 else names[::-1]
        for name in order:
            start = time.perf_counter()
            calls[name]()
            times[name].append(time.perf_counter() - start)

    median_ms = {name: 1000 * statistics.median(values) for name, values in times.items()}
    grpo_ms, am3_ms = median_ms["grpo"], median_ms["am3_grpo[paper]"]
    ratio = am3_ms / grpo_ms
    print(
        f"am3_grpo (paper variant) took {am3_ms:.1f} ms per call against {grpo_ms:.1f} ms for verl's grpo on "
        f"{BATCH} responses x {LENGTH} tokens ({BATCH // GROUP} groups of {GROUP}, {TURNS} turns each), "
        f"median of {args.repeats} interleaved calls on {torch.get_num_threads()} CPU threads: ratio {ratio:.2f} "
        f"(target <= {TARGET}, {'met' if ratio <= TARGET else 'NOT met'}). Other variants (ms): "
        + ", ".join(f"{v} {median_ms[f'am3_grpo[{v}]']:.1f}" for v in VARIANTS if v != "paper")
        + ".",
        file=sys.stderr,
    )
    print(
        json.dumps(
            {
                "benchmark": "advantage",
                "batch": BATCH,
                "length": LENGTH,
                "turns": TURNS,
                "group_size": GROUP,
                "repeats": args.repeats,
                "threads": torch.get_num_threads(),
                "am3_grpo_ms": round(am3_ms, 2),
                "grpo_ms": round(grpo_ms, 2),
                "ratio": round(ratio, 3),
                "target": TARGET,
                "met": ratio <= TARGET,
                "variants_ms": {v: round(median_ms[f"am3_grpo[{v}]"], 2) for v in VARIANTS},
            }
        )
    )


if __name__ == "__main__":
    main()
