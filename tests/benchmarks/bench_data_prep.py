"""Benchmark: the InterSafe-V conversion at the paper's scale against a single-process floor.

Generates a synthetic corpus like the paper's (11,270 dialogues, 4 user turns and 1.53 images per
dialogue on average, 256x256 PNG files), then runs ``data_prep/intersafe_v.py`` at 1,000 and at 11,270
dialogues, and in the same run the floor: one process that reads the same JSONL, decodes every image
once with PIL and writes the same rows and image bytes with pyarrow (same schema and writer settings),
with no other validation. Each command runs in its own process; wall time is measured from outside and
peak RSS is the largest sum over the command's process tree (main process, forkserver and workers),
sampled every 20 ms; the tree's CPU seconds are reported too, to read timings taken on a shared
machine, with the 1-minute load average before and after (other processes on a shared machine take
cores from the two-worker conversion). The fastest of ``--repeats`` runs counts (runs alternate
between the two commands).

Targets: full scale under 60 s, at most 1.0x the floor, peak RSS under 1.5 GB, RSS growing less than
30% from 1,000 to 11,270 dialogues. The last line printed is one JSON object with the figures.

    python tests/benchmarks/bench_data_prep.py [--dialogues 11270] [--small 1000] [--repeats 2] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[2]
WORDS = (
    "show",
    "picture",
    "please",
    "explain",
    "what",
    "this",
    "place",
    "object",
    "people",
    "how",
    "would",
    "someone",
    "use",
    "it",
    "here",
    "again",
    "next",
    "step",
    "more",
    "detail",
)


def _image_pool(n: int, seed: int) -> list[bytes]:
    """``n`` distinct 256x256 PNGs: gradients, shapes and light noise (about 75 KB each)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:256, 0:256]
    pool = []
    for i in range(n):
        base = np.stack([(x * (i % 7 + 1)) % 256, (y * (i % 5 + 1)) % 256, ((x + y) * (i % 3 + 1)) % 256], -1)
        pixels = np.clip(base + rng.integers(-2, 3, size=base.shape), 0, 255).astype(np.uint8)
        image = Image.fromarray(pixels, "RGB")
        draw = ImageDraw.Draw(image)
        for _ in range(4):
            a, b = (int(v) for v in rng.integers(0, 200, 2))
            draw.ellipse((a, b, a + 50, b + 40), fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        pool.append(buffer.getvalue())
    return pool


def generate_corpus(folder: Path, n_dialogues: int, seed: int = 0) -> dict[str, float]:
    """Write ``dialogues.jsonl`` and ``images/`` under ``folder``; returns the corpus statistics."""
    from am3_verl.dialogue import CATEGORIES

    rng = random.Random(seed)
    images_dir = folder / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    pool = _image_pool(64, seed)
    n_images = round(1.53 * n_dialogues)
    per_dialogue = [1] * n_dialogues
    for _ in range(n_images - n_dialogues):
        per_dialogue[rng.randrange(n_dialogues)] += 1
    total_turns = 0
    image_counter = 0
    with open(folder / "dialogues.jsonl", "w", encoding="utf-8") as handle:
        for d in range(n_dialogues):
            n_turns = rng.randint(2, 6)
            total_turns += n_turns
            turn_images: list[list[str]] = [[] for _ in range(n_turns)]
            for _ in range(per_dialogue[d]):
                name = f"{d:06d}-{image_counter}.png"
                (images_dir / name).write_bytes(pool[image_counter % len(pool)])
                turn_images[rng.randrange(n_turns)].append(f"images/{name}")
                image_counter += 1
            turns = []
            for t in range(n_turns):
                words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 30)))
                text = " ".join(["<image>"] * len(turn_images[t]) + [words.capitalize() + "?"])
                turn = {"user": text, "images": turn_images[t]}
                if rng.random() < 0.5:
                    turn["assistant"] = "I'm sorry, but I can't help with that. " + words
                turns.append(turn)
            record = {"id": f"bench-{d:06d}", "category": rng.choice(CATEGORIES), "source": "bench", "turns": turns, "meta": {}}
            handle.write(json.dumps(record) + "\n")
    return {
        "dialogues": n_dialogues,
        "images": image_counter,
        "mean_turns": total_turns / n_dialogues,
        "mean_images": image_counter / n_dialogues,
    }


def head(source: Path, target: Path, n: int) -> None:
    """The first ``n`` lines of ``source`` as ``target`` (image paths stay valid: same folder)."""
    with open(source, encoding="utf-8") as src, open(target, "w", encoding="utf-8") as dst:
        for i, line in enumerate(src):
            if i == n:
                break
            dst.write(line)


def floor(input_path: Path, output_dir: Path) -> None:
    """The floor: read, decode every image once, write the same rows with pyarrow; nothing else."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from am3_verl.data.intersafe_v import RL_SCHEMA
    from am3_verl.data.pipeline import parquet_settings

    output_dir.mkdir(parents=True, exist_ok=True)
    base = input_path.parent
    writer = pq.ParquetWriter(str(output_dir / "floor.parquet"), RL_SCHEMA, **parquet_settings(RL_SCHEMA))
    rows = []

    def load(path: str) -> dict[str, bytes]:
        data = (base / path).read_bytes()
        with Image.open(io.BytesIO(data)) as image:
            image.load()
        return {"bytes": data}

    with open(input_path, encoding="utf-8") as handle:
        for position, line in enumerate(handle):
            record = json.loads(line)
            turns = record["turns"]
            rows.append(
                {
                    "prompt": [{"role": "user", "content": turns[0]["user"]}],
                    "images": [load(p) for p in turns[0]["images"]],
                    "am3_later_turns": [
                        {"user": t["user"], "images": [load(p) for p in t["images"]], "assistant": t.get("assistant")} for t in turns[1:]
                    ],
                    "agent_name": "am3_dialogue",
                    "data_source": "intersafe_v",
                    "reward_model": {"style": "judge", "ground_truth": record["category"]},
                    "extra_info": {
                        "index": position,
                        "id": record["id"],
                        "category": record["category"],
                        "num_turns": len(turns),
                        "harmful": record["category"] != "benign",
                        "split": "train",
                        "reference_first_reply": turns[0].get("assistant"),
                    },
                    "am3_meta": json.dumps({"source": record["source"], "meta": record["meta"]}, sort_keys=True),
                }
            )
            if len(rows) == 256:
                writer.write_table(pa.Table.from_pylist(rows, schema=RL_SCHEMA), row_group_size=256)
                rows = []
    if rows:
        writer.write_table(pa.Table.from_pylist(rows, schema=RL_SCHEMA), row_group_size=256)
    writer.close()


def measure(command: list[str]) -> dict[str, float]:
    """Run ``command``: wall seconds, peak summed RSS of its process tree (MB), CPU seconds of the tree."""
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    root = psutil.Process(process.pid)
    peak = 0
    cpu: dict[int, float] = {}
    while process.poll() is None:
        total = 0
        try:
            tree = [root, *root.children(recursive=True)]
        except psutil.Error:
            tree = []
        for proc in tree:
            try:
                total += proc.memory_info().rss
                times = proc.cpu_times()
                cpu[proc.pid] = times.user + times.system
            except psutil.Error:
                pass
        peak = max(peak, total)
        time.sleep(0.02)
    wall = time.perf_counter() - started
    out, err = process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({process.returncode}):\n{err[-3000:]}")
    return {
        "wall_s": round(wall, 2),
        "peak_rss_mb": round(peak / 2**20, 1),
        "cpu_s": round(sum(cpu.values()), 1),
        "stdout": out.strip().splitlines()[-1:],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dialogues", type=int, default=11270)
    parser.add_argument("--small", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--workdir", default=None, help="where the corpus and outputs go (default: a temporary folder)")
    args = parser.parse_args()

    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="am3-bench-data-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.perf_counter()
        stats = generate_corpus(work / "corpus", args.dialogues)
        print(f"corpus: {stats} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        inputs = {args.small: work / "corpus" / f"head{args.small}.jsonl", args.dialogues: work / "corpus" / "dialogues.jsonl"}
        head(inputs[args.dialogues], inputs[args.small], args.small)
        load_before = os.getloadavg()[0]
        results: dict[str, dict[int, dict[str, float]]] = {"ours": {}, "floor": {}}
        for n, path in inputs.items():
            for repeat in range(args.repeats):
                runs = {
                    "floor": [sys.executable, __file__, "--floor-run", str(path), str(work / "out-floor")],
                    "ours": [
                        sys.executable,
                        str(REPO / "data_prep" / "intersafe_v.py"),
                        "--input",
                        str(path),
                        "--output_dir",
                        str(work / "out-ours"),
                        "--no_progress",
                    ],
                }
                for name in ("floor", "ours") if repeat % 2 == 0 else ("ours", "floor"):
                    result = measure(runs[name])
                    print(f"{name} n={n} run {repeat}: {result}", file=sys.stderr)
                    best = results[name].get(n)
                    if best is None or result["wall_s"] < best["wall_s"]:
                        results[name][n] = {**result, "peak_rss_mb": max(result["peak_rss_mb"], (best or {}).get("peak_rss_mb", 0))}
                    shutil.rmtree(work / f"out-{name}", ignore_errors=True)
        ours_full, floor_full = results["ours"][args.dialogues], results["floor"][args.dialogues]
        ours_small = results["ours"][args.small]
        ratio = ours_full["wall_s"] / floor_full["wall_s"]
        growth = (ours_full["peak_rss_mb"] - ours_small["peak_rss_mb"]) / ours_small["peak_rss_mb"]
        line = {
            "benchmark": "data_prep_intersafe_v",
            "cpus": os.cpu_count(),
            "corpus": stats,
            "ours": {str(n): {k: v for k, v in r.items() if k != "stdout"} for n, r in results["ours"].items()},
            "floor": {str(n): {k: v for k, v in r.items() if k != "stdout"} for n, r in results["floor"].items()},
            "ratio_vs_floor": round(ratio, 3),
            "cpu_ratio_vs_floor": round(ours_full["cpu_s"] / floor_full["cpu_s"], 3),
            "load_avg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            "rss_growth": round(growth, 3),
            "targets": {"full_wall_s": 60, "ratio_vs_floor": 1.0, "peak_rss_mb": 1536, "rss_growth": 0.30},
            "met": {
                "full_wall_s": ours_full["wall_s"] < 60,
                "ratio_vs_floor": ratio <= 1.0,
                "peak_rss_mb": ours_full["peak_rss_mb"] < 1536,
                "rss_growth": growth < 0.30,
            },
        }
        print(json.dumps(line))
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--floor-run":
        floor(Path(sys.argv[2]), Path(sys.argv[3]))
    else:
        main()
