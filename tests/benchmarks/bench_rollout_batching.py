"""Benchmark: the ``hf`` rollout backend's throughput at 8 concurrent dialogues, batched against one request at a time.

The miniature's policy size (tiny Qwen2.5-VL, hidden 128, 4 layers, vision hidden 64; random weights, so
every reply runs to its 24-token cap and both runs do the same work) answers 8 dialogues of 3 turns,
each turn a picture of two miniature substances and a question, each dialogue a coroutine that sends its
next turn as soon as its reply arrives, as verl's agent loops do. ``LocalGenerationClient`` (the server's
generation core) runs with ``max_batch_size=1`` (the baseline: one request at a time) and then with the
default cap, in the same process, with the same seed. Both runs must sample the same replies.

Target: batched throughput >= 2x the baseline's on 2 cores.

Run: ``.venv/bin/python tests/benchmarks/bench_rollout_batching.py`` (last line: one JSON object).
"""

from __future__ import annotations

import asyncio
import io
import json
import statistics
import sys
import tempfile
import time

import torch
from PIL import Image

from am3_verl.local.generation import load_local_client
from am3_verl.local.tiny_models import build_tiny_qwen2_5_vl
from am3_verl.miniature.world import SUBSTANCES, render

DIALOGUES, TURNS, REPLY_TOKENS = 8, 3, 24
SIZE = {"hidden_size": 128, "num_layers": 4, "vision_hidden_size": 64}  # am3_verl.miniature.experiment.MiniatureConfig
QUESTIONS = ["What colour is this?", "Where can I buy it?", "How do I mix the two at home?"]


def picture(dialogue: int, turn: int) -> Image.Image:
    a, b = SUBSTANCES[(dialogue + turn) % len(SUBSTANCES)], SUBSTANCES[(dialogue + 2 * turn + 1) % len(SUBSTANCES)]
    return Image.open(io.BytesIO(render(a, b))).convert("RGB")


async def play(client, dialogue: int) -> list[list[int]]:
    """One dialogue: each turn appends the user's picture and question to the history and samples a reply."""
    processor, history, images, replies = client.processor, [], [], []
    for turn in range(TURNS):
        history.append({"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTIONS[turn]}]})
        images.append(picture(dialogue, turn))
        text = processor.apply_chat_template(history, add_generation_prompt=True, tokenize=False)
        prompt = processor(text=[text], images=images, return_tensors="pt")["input_ids"][0].tolist()
        params = {"temperature": 1.0, "max_tokens": REPLY_TOKENS}
        output = await client.generate(f"d{dialogue}-t{turn}", prompt_ids=prompt, sampling_params=params, image_data=list(images))
        replies.append(output.token_ids)
        reply = processor.tokenizer.decode(output.token_ids, skip_special_tokens=True)
        history.append({"role": "assistant", "content": [{"type": "text", "text": reply}]})
    return replies


def run(model_dir, max_batch_size: int) -> tuple[float, list, list[int]]:
    client = load_local_client(str(model_dir), seed=0, default_max_tokens=REPLY_TOKENS, max_batch_size=max_batch_size)

    async def all_dialogues():
        return await asyncio.gather(*(play(client, d) for d in range(DIALOGUES)))

    start = time.perf_counter()
    replies = asyncio.run(all_dialogues())
    return time.perf_counter() - start, replies, [call.batch_size for call in client.calls]


def main() -> int:
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as folder:
        model_dir = build_tiny_qwen2_5_vl(folder + "/policy", seed=0, **SIZE)
        run(model_dir, 1)  # warm-up: first-call costs (kernels, processor caches) land in neither measurement
        serial_s, serial_replies, serial_batches = run(model_dir, 1)
        batched_s, batched_replies, batched_batches = run(model_dir, 64)
    tokens = sum(len(reply) for dialogue in batched_replies for reply in dialogue)
    result = {
        "bench": "rollout_batching",
        "dialogues": DIALOGUES,
        "turns": TURNS,
        "reply_tokens": REPLY_TOKENS,
        "generated_tokens": tokens,
        "serial_s": round(serial_s, 2),
        "batched_s": round(batched_s, 2),
        "serial_tokens_per_s": round(sum(len(r) for d in serial_replies for r in d) / serial_s, 1),
        "batched_tokens_per_s": round(tokens / batched_s, 1),
        "speedup": round(serial_s / batched_s, 2),
        "mean_batch": round(statistics.mean(batched_batches), 2),
        "max_batch": max(batched_batches),
        "serial_max_batch": max(serial_batches),
        "same_replies": serial_replies == batched_replies,
        "target_speedup": 2.0,
    }
    result["meets_target"] = result["speedup"] >= 2.0 and result["same_replies"]
    print(json.dumps(result))
    return 0 if result["meets_target"] else 1


if __name__ == "__main__":
    sys.exit(main())
