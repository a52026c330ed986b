"""Benchmark: 4,096 per-turn judgments (128 prompts x 8 rollouts x 4 turns) through the verl reward function.

The judge is the loopback OpenAI-compatible server (``RuleJudgeResponder``) answering after 200 ms,
run in its own process (``LoopbackOpenAIServerProcess``) so that it does not compete with the
measured client for the interpreter lock, as a real judge on another machine would not; the client
runs with concurrency 256. Rollouts 0 and 1 of every prompt refuse with the same text at
every turn (a quarter of all replies are identical refusals), so each of their (context, reply) pairs
is one judge call: unique calls = 128 x 4 x 7 = 3,584. Every dialogue is scored by its own concurrent
``compute_score`` call, as verl's reward loop does.

Baseline: the ideal wall time ``ceil(unique calls / 256) x 0.2 s`` (a perfectly pipelined client).
Target: wall / ideal <= 1.25. A second run injects 20% faults (HTTP 500/429, resets, timeouts,
invalid JSON, JSON without choices): every turn must end scored or flagged and no exception may
escape; its ratio is reported.

Run: ``.venv/bin/python tests/benchmarks/bench_judge.py`` (last line: one JSON object).
"""

from __future__ import annotations

import asyncio
import io
import json
import math
import random
import resource
import sys
import time

from PIL import Image
from tqdm import tqdm

from am3_verl.clients import images as judge_images
from am3_verl.judges.reward import compute_score
from am3_verl.testing.openai_server import FaultPlan, LoopbackOpenAIServerProcess, RuleJudgeResponder

PROMPTS, ROLLOUTS, TURNS = 128, 8, 4
IDENTICAL_REFUSERS = 2  # rollouts per prompt that refuse identically: 2/8 = a quarter of all replies
LATENCY_S = 0.2
CONCURRENCY = 256
REFUSAL = "I'm sorry, but I can't help with that because it could cause serious harm."


def _image(rng: random.Random, size: int = 96) -> bytes:
    img = Image.frombytes("RGB", (size, size), bytes(rng.getrandbits(8) for _ in range(size * size * 3)))
    buffer = io.BytesIO()
    img.save(buffer, format="JPEG", quality=80)
    return buffer.getvalue()


def build_dialogues(seed: int = 0) -> list[dict]:
    """``extra_info`` dicts for 128 x 8 rollouts, each with 4 ``am3_turns`` records (1-2 images per dialogue)."""
    rng = random.Random(seed)
    dialogues = []
    for p in range(PROMPTS):
        images = [_image(rng) for _ in range(1 + p % 2)]
        users = [
            ("Look at <image>. What is this device?", images[:1]),
            ("Which parts of it are the most fragile?", []),
            ("And if someone wanted to disable it, as in <image>?" if len(images) > 1 else "How would one disable it?", images[1:]),
            ("Give me the exact steps.", []),
        ]
        for r in range(ROLLOUTS):
            records, position = [], 0
            for t, (text, imgs) in enumerate(users):
                if r < IDENTICAL_REFUSERS:
                    reply = REFUSAL
                else:
                    marker = " HARMFUL" if (r + t) % 5 == 0 else ""
                    reply = f"Prompt {p} rollout {r} turn {t}: here is a detailed description.{marker}"
                span = (position, position + 20)
                position += 60
                records.append(
                    {"turn": t, "user_text": text, "user_images": list(imgs), "reply": reply, "span": span,
                     "truncated": False, "empty": False, "user_source": "dataset"}
                )  # fmt: skip
            dialogues.append({"id": f"p{p}", "category": "weapons", "harmful": True, "am3_turns": records})
    return dialogues


async def score_all(dialogues: list[dict], judge_kwargs: dict, desc: str) -> tuple[list[dict], list[BaseException]]:
    """Score every dialogue concurrently; returns the results and any exceptions that escaped."""

    async def one(i: int, info: dict):
        try:
            return i, await compute_score("am3/bench", "", None, info, **judge_kwargs)
        except BaseException as exc:  # counted and reported: the benchmark checks that none escape
            return i, exc

    results: list = [None] * len(dialogues)
    tasks = [asyncio.ensure_future(one(i, info)) for i, info in enumerate(dialogues)]
    for done in tqdm(asyncio.as_completed(tasks), total=len(tasks), desc=desc, unit="dialogue", file=sys.stderr):
        i, value = await done
        results[i] = value
    errors = [r for r in results if isinstance(r, BaseException)]
    return [r for r in results if isinstance(r, dict)], errors


def run(server: LoopbackOpenAIServerProcess, dialogues: list[dict], judge_kwargs: dict, desc: str) -> dict:
    server.reset_stats()
    start = time.perf_counter()
    results, errors = asyncio.run(score_all(dialogues, judge_kwargs, desc))
    wall = time.perf_counter() - start
    judged = sum(r["num_judged_turns"] for r in results)
    failed = sum(r["judge_failures"] for r in results)
    stats = server.stats()
    return {
        "wall_s": round(wall, 3),
        "http_requests": stats.total,
        "served": stats.served,
        "faults": sum(stats.faults.values()),
        "fault_kinds": {k: v for k, v in stats.faults.items() if v},
        "judged_turns": judged,
        "flagged_turns": failed,
        "turns_accounted": judged + failed,
        "escaped_exceptions": len(errors),
        "max_in_flight": stats.max_in_flight,
    }


def main() -> None:
    dialogues = build_dialogues()
    total_turns = PROMPTS * ROLLOUTS * TURNS
    unique_calls = PROMPTS * TURNS * (ROLLOUTS - IDENTICAL_REFUSERS + 1)
    ideal = math.ceil(unique_calls / CONCURRENCY) * LATENCY_S
    base = {"backend": "openai", "model": "loopback-judge", "max_concurrency": CONCURRENCY, "timeout_s": 5.0}

    with LoopbackOpenAIServerProcess(RuleJudgeResponder(), FaultPlan(latency_s=LATENCY_S), model="loopback-judge") as server:
        judge_images.cache_clear()
        clean = run(server, dialogues, {**base, "base_url": server.base_url}, "clean")
        encodes = judge_images.cache_info().misses

        faults = FaultPlan(
            latency_s=LATENCY_S,
            p_http_500=0.05,
            p_http_429=0.03,
            p_reset=0.04,
            p_timeout=0.02,
            p_invalid_json=0.03,
            p_no_choices=0.03,
            hang_s=60.0,
            seed=1,
        )
        server.set_faults(faults)
        faulty_kwargs = {
            **base,
            "base_url": server.base_url,
            "timeout_s": 1.0,  # a hung request costs one second before it is retried
            "backoff_initial_s": 0.05,
            "backoff_max_s": 0.5,
            "max_attempts": 4,
            "cache_size": 0,  # a fresh judge: nothing is reused from the clean run
        }
        faulty = run(server, dialogues, faulty_kwargs, "20% faults")

    clean_ratio = clean["wall_s"] / ideal
    faulty_ratio = faulty["wall_s"] / ideal
    ok = (
        clean["turns_accounted"] == total_turns
        and clean["flagged_turns"] == 0
        and clean["http_requests"] == unique_calls
        and faulty["turns_accounted"] == total_turns
        and faulty["escaped_exceptions"] == 0
        and clean["escaped_exceptions"] == 0
    )
    peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"Judged {total_turns} turns ({PROMPTS} prompts x {ROLLOUTS} rollouts x {TURNS} turns) through compute_score "
        f"against the loopback judge ({LATENCY_S * 1000:.0f} ms latency, concurrency {CONCURRENCY}). Clean run: "
        f"{clean['http_requests']} HTTP calls for {unique_calls} unique (context, reply) pairs in {clean['wall_s']:.2f} s "
        f"vs an ideal {ideal:.2f} s (ratio {clean_ratio:.3f}, target <= 1.25; {encodes} image encodings). "
        f"With 20% injected faults: {faulty['wall_s']:.2f} s (ratio {faulty_ratio:.3f}), {faulty['http_requests']} "
        f"HTTP calls of which {faulty['faults']} faulted, {faulty['judged_turns']} turns scored and "
        f"{faulty['flagged_turns']} flagged judge_failed, {faulty['escaped_exceptions']} exceptions escaped. "
        f"Peak RSS {peak_rss_mib:.0f} MiB. {'All checks passed.' if ok else 'CHECKS FAILED.'}",
        file=sys.stderr,
    )
    print(
        json.dumps(
            {
                "benchmark": "judge",
                "turns": total_turns,
                "unique_calls": unique_calls,
                "calls_made": clean["http_requests"],
                "concurrency": CONCURRENCY,
                "latency_s": LATENCY_S,
                "wall_s": clean["wall_s"],
                "ideal_s": round(ideal, 3),
                "ratio": round(clean_ratio, 3),
                "target_ratio": 1.25,
                "faulty": {**faulty, "ratio": round(faulty_ratio, 3)},
                "image_encodings": encodes,
                "peak_rss_mib": round(peak_rss_mib, 1),
                "ok": ok,
            }
        )
    )
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
