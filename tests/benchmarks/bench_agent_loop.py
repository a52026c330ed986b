"""Benchmark: CPU overhead per turn of ``am3_dialogue`` against verl's ``ToolAgentLoop`` doing the same turns.

Both loops run inside verl's own ``AgentLoopWorker`` (continuous-token builder, post-processing) over the
same 4-turn dialogues with 1.53 images on average (224x224 PNG), with the tiny Qwen2.5-VL's tokenizer and
processor. Generation is a canned backend; its own time is measured and subtracted, so the figure is the
loop's overhead. The baseline delivers user turns 2-4 as tool responses of the same text and images (the
only way stock verl can add images mid-dialogue). Target: ratio (ours / baseline) at most 1.0.

Run: ``.venv/bin/python tests/benchmarks/bench_agent_loop.py [--dialogues N] [--repeats R]``.
The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))  # tests/: the canned generation backend

from bench_agent_loop_data import USER_TEXTS, has_second_image, later_turn_images, png  # noqa: E402

from canned_generation import CannedGenerationClient  # noqa: E402
from am3_verl.local.rollout import (  # noqa: E402
    compose_ppo_config,
    default_model_dir,
    load_rl_dataset,
    make_agent_loop_worker,
    rollout_batch,
)
from am3_verl.local.tiny_models import build_all  # noqa: E402

IM_START, IM_END, HELLO, WORLD = 151644, 151645, 9707, 1879
TURNS = 4


def rows(n: int, agent_name: str) -> list[dict]:
    out = []
    for i in range(n):
        second = has_second_image(i)
        marker = "Two pictures. " if second else "One picture. "
        row = {
            "prompt": [{"role": "user", "content": marker + USER_TEXTS[0]}],
            "images": [{"bytes": png(100 + i)}],
            "agent_name": agent_name,
            "data_source": "bench",
            "reward_model": {"style": "judge", "ground_truth": None},
            "extra_info": {"index": i, "id": f"b{i}", "category": "violence"},
        }
        if agent_name == "am3_dialogue":
            row["am3_later_turns"] = [
                {"user": ("<image>" if later_turn_images(t, second) else "") + USER_TEXTS[t],
                 "images": [{"bytes": b} for b in later_turn_images(t, second)], "assistant": None}
                for t in range(1, TURNS)
            ]  # fmt: skip
        out.append(row)
    return out


class TimedCanned(CannedGenerationClient):
    """Canned backend that also accounts its own time, so it can be subtracted from the loop's."""

    def __init__(self, replies, **kwargs):
        super().__init__(replies, **kwargs)
        self.seconds = 0.0

    async def generate(self, request_id, **kwargs):
        start = time.perf_counter()
        try:
            return await super().generate(request_id, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start


def tool_policy(tokenizer):
    """Replies that call ``next_user_turn`` for turns 1-3 and answer plainly on turn 4."""
    two = tokenizer.encode("Two pictures.", add_special_tokens=False)

    def reply(index: int, prompt_ids: list[int], max_tokens: int) -> list[int]:
        turn = (prompt_ids.count(IM_START) - 3) // 2
        if turn >= TURNS - 1:
            return [HELLO, WORLD, IM_END]
        with_image = any(prompt_ids[i : i + len(two)] == two for i in range(min(len(prompt_ids), 64)))
        call = json.dumps({"name": "next_user_turn", "arguments": {"turn": turn + 1, "with_image": with_image}})
        return tokenizer.encode(f"<tool_call>\n{call}\n</tool_call>", add_special_tokens=False) + [IM_END]

    return reply


def measure(worker, batch, client, repeats: int) -> tuple[float, int]:
    overheads, turns = [], 0
    for _ in range(repeats):
        client.seconds = 0.0
        start = time.perf_counter()
        output = asyncio.run(worker.generate_sequences(batch))
        overheads.append(time.perf_counter() - start - client.seconds)
        turns = int(sum(int(n) for n in output.non_tensor_batch["__num_turns__"]) // 2)
    return statistics.median(overheads), turns


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dialogues", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", default="/tmp/am3-bench-agent-loop")
    args = parser.parse_args()

    model = build_all(default_model_dir().parent)["qwen2_5_vl"]
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)

    ours_data, base_data = work / "ours.parquet", work / "baseline.parquet"
    pq.write_table(pa.Table.from_pylist(rows(args.dialogues, "am3_dialogue")), ours_data)
    pq.write_table(pa.Table.from_pylist(rows(args.dialogues, "tool_agent")), base_data)
    loops = work / "loops.yaml"
    loops.write_text(yaml.safe_dump([{"name": "am3_dialogue", "_target_": "am3_verl.env.agent_loop.DialogueAgentLoop"}]))

    ours_cfg = compose_ppo_config(model, prompt_length=512, response_length=1024, agent_loop_config_path=loops)
    base_cfg = compose_ppo_config(
        model, prompt_length=512, response_length=1024, agent_loop_config_path=loops,
        overrides=[
            f"actor_rollout_ref.rollout.multi_turn.function_tool_path={HERE / 'agent_loop_user_turn_tool.py'}",
            "actor_rollout_ref.rollout.multi_turn.format=hermes",
            f"actor_rollout_ref.rollout.multi_turn.max_assistant_turns={TURNS}",
            "actor_rollout_ref.rollout.agent.default_agent_loop=tool_agent",
        ],
    )  # fmt: skip

    ours_client = TimedCanned([[HELLO, WORLD, IM_END]])
    ours_worker = make_agent_loop_worker(ours_cfg, ours_client)
    ours_batch = rollout_batch(load_rl_dataset([ours_data], ours_cfg), list(range(args.dialogues)))
    base_client = TimedCanned(tool_policy(ours_worker.tokenizer))
    base_worker = make_agent_loop_worker(base_cfg, base_client)
    base_batch = rollout_batch(load_rl_dataset([base_data], base_cfg), list(range(args.dialogues)))

    measure(ours_worker, ours_batch, ours_client, 1)  # warm-up: imports, caches
    measure(base_worker, base_batch, base_client, 1)
    ours_s, ours_turns = measure(ours_worker, ours_batch, ours_client, args.repeats)
    base_s, base_turns = measure(base_worker, base_batch, base_client, args.repeats)
    expected = args.dialogues * TURNS
    if ours_turns != expected or base_turns != expected:
        raise SystemExit(f"turn counts differ from {expected}: am3_dialogue {ours_turns}, tool_agent {base_turns}")
    result = {
        "benchmark": "agent_loop_overhead_per_turn",
        "dialogues": args.dialogues,
        "turns_per_dialogue": TURNS,
        "images_per_dialogue": 1 + sum(has_second_image(i) for i in range(args.dialogues)) / args.dialogues,
        "am3_dialogue_ms_per_turn": round(1000 * ours_s / ours_turns, 3),
        "tool_agent_baseline_ms_per_turn": round(1000 * base_s / base_turns, 3),
        "ratio": round(ours_s / base_s, 3),
        "target_ratio_max": 1.0,
    }
    print(f"am3_dialogue {result['am3_dialogue_ms_per_turn']} ms/turn vs ToolAgentLoop {result['tool_agent_baseline_ms_per_turn']} ms/turn")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
