"""Benchmark: the InterSafe-V builder's own overhead against the calls it makes.

48 seeds x 2 victims through all three stages (text-to-image off) against the scripted loopback chat
server, run in a separate process with a fixed latency per request, 16 seeds at a time. Two baselines
from the same run:

* wall time against the ideal: each seed is a chain of 11 dependent calls (1 decompose, 3 reviews,
  3 x (attacker, victim) with the two victims in parallel, 1 judge round), so with ``concurrency`` seeds
  at a time the run cannot finish before ``ceil(seeds / concurrency) * 11 * latency``;
* CPU per call against the bare chat client: the exact request bodies the builder sent are replayed
  through :class:`am3_verl.clients.chat.ChatClient`; the difference is what prompts, checkpoints (one
  atomic file write per call), request fingerprints and the export cost.

Target: wall <= 1.3 x ideal at 200 ms latency (real VLM calls take seconds, so the overhead share is
smaller still). The gap is the builder's CPU per call (prompt rendering, request fingerprints, the JSON
checkpoint) and one atomic checkpoint write per result, on a machine shared with the server process.

Prints a summary paragraph on stderr and one JSON line last on stdout.
"""

from __future__ import annotations

import asyncio
import json
import math
import resource
import sys
import tempfile
import time
from pathlib import Path

SEEDS = 48
CONCURRENCY = 16
LATENCY_S = 0.2
CHAIN = 11
TARGET_WALL_RATIO = 1.3


def _seeds(folder: Path) -> Path:
    import random

    from am3_verl.data.sample import draw_image

    (folder / "images").mkdir(parents=True)
    lines = []
    for k in range(SEEDS):
        (folder / "images" / f"s{k}.png").write_bytes(draw_image(f"S{k}", "box", random.Random(k)))
        lines.append(
            json.dumps(
                {
                    "id": f"s{k}",
                    "image": f"images/s{k}.png",
                    "category": "violence",
                    "source": "bench",
                    "query": f"How could someone cause harm in situation number {k}?",
                }
            )
        )
    (folder / "seeds.jsonl").write_text("\n".join(lines) + "\n")
    return folder / "seeds.jsonl"


async def _replay(bodies: list[dict], base_url: str) -> None:
    from am3_verl.clients.chat import ChatClient
    from am3_verl.clients.endpoint import EndpointConfig

    clients = {
        model: ChatClient(EndpointConfig(base_url=base_url, model=model, max_concurrency=64)) for model in {b["model"] for b in bodies}
    }

    async def one(body: dict) -> None:
        params = {k: v for k, v in body.items() if k not in ("model", "messages")}
        result = await clients[body["model"]].complete(body["messages"], **params)
        assert result.ok, result.error

    await asyncio.gather(*(one(b) for b in bodies))


def main() -> None:
    from am3_verl.builder.config import parse_config
    from am3_verl.builder.demo import loopback_config
    from am3_verl.testing.builder_loopback import ScriptedBuilderModels
    from am3_verl.builder.pipeline import build
    from am3_verl.testing.openai_server import FaultPlan, LoopbackOpenAIServerProcess

    with (
        tempfile.TemporaryDirectory() as tmp,
        LoopbackOpenAIServerProcess(ScriptedBuilderModels(), FaultPlan(latency_s=LATENCY_S), record_last=100_000) as server,
    ):
        root = Path(tmp)
        seeds = _seeds(root / "seeds")
        config = parse_config(loopback_config(server.base_url, None, run={"concurrency": CONCURRENCY}))
        cpu0, wall0 = time.process_time(), time.perf_counter()
        summary = build(seeds, root / "out", config, progress=False)
        builder_cpu, builder_wall = time.process_time() - cpu0, time.perf_counter() - wall0
        bodies = [r.body for r in server.last_requests()]
        calls = len(bodies)
        cpu1, wall1 = time.process_time(), time.perf_counter()
        asyncio.run(_replay(bodies, server.base_url))
        client_cpu, client_wall = time.process_time() - cpu1, time.perf_counter() - wall1

    ideal = math.ceil(SEEDS / CONCURRENCY) * CHAIN * LATENCY_S
    wall_ratio = builder_wall / ideal
    cpu_ratio = builder_cpu / client_cpu
    ok = summary.exported.dialogues == 2 * SEEDS and calls == summary.ledger_run.calls and wall_ratio <= TARGET_WALL_RATIO
    peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"Built {summary.exported.dialogues} dialogues from {SEEDS} seeds with {calls} calls ({LATENCY_S * 1000:.0f} ms "
        f"latency, {CONCURRENCY} seeds at a time) in {builder_wall:.2f} s against an ideal {ideal:.2f} s (ratio "
        f"{wall_ratio:.3f}, target <= {TARGET_WALL_RATIO}). CPU: {builder_cpu * 1000 / calls:.2f} ms per call in the "
        f"builder vs {client_cpu * 1000 / calls:.2f} ms for the bare client replaying the same requests "
        f"({client_wall:.2f} s wall, all at once) -> ratio {cpu_ratio:.2f}. Peak RSS {peak_rss_mib:.0f} MiB. "
        f"{'All checks passed.' if ok else 'CHECKS FAILED.'}",
        file=sys.stderr,
    )
    print(
        json.dumps(
            {
                "benchmark": "builder",
                "seeds": SEEDS,
                "dialogues": summary.exported.dialogues,
                "calls": calls,
                "concurrency": CONCURRENCY,
                "latency_s": LATENCY_S,
                "wall_s": round(builder_wall, 3),
                "ideal_s": round(ideal, 3),
                "ratio": round(wall_ratio, 3),
                "target_ratio": TARGET_WALL_RATIO,
                "builder_cpu_ms_per_call": round(builder_cpu * 1000 / calls, 3),
                "client_cpu_ms_per_call": round(client_cpu * 1000 / calls, 3),
                "cpu_ratio_vs_client": round(cpu_ratio, 3),
                "peak_rss_mib": round(peak_rss_mib, 1),
                "ok": ok,
            }
        )
    )
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
