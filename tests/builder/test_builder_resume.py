"""Kill-and-resume: the builder command is interrupted mid-run (SIGKILL, and Ctrl-C), then run again.

No seed is lost or duplicated, the output is byte-identical to an uninterrupted run, and no call that had
finished is sent again: every request is identified by a fingerprint of its model and messages, counted
in the checkpoints before the resume and at the loopback servers after it. The builder runs as a real
subprocess of the command line script; the servers run in this process.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from am3_verl.builder.config import load_config
from am3_verl.testing.builder_loopback import ImagesFaultPlan, LoopbackImagesServer, ScriptedBuilderModels
from am3_verl.builder.pipeline import build
from am3_verl.testing.openai_server import FaultPlan, LoopbackOpenAIServer

from builder_helpers import checkpoint_shas, image_server_shas, read_jsonl, server_shas, write_config, write_seeds

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "data_prep" / "build_intersafe_v.py"
CONCURRENCY = 3
VICTIMS = 2


def _seed_specs() -> list[dict]:
    specs = []
    for k in range(8):
        marker = {1: " [[NEWIMAGE]]", 4: " [[REGEN1]]", 6: " [[NEWIMAGE]]"}.get(k, "")
        specs.append({"id": f"seed-{k}", "query": f"How could someone cause harm at place number {k}?{marker}"})
    return specs


def _command(seeds: Path, out: Path, config: Path) -> list[str]:
    return [sys.executable, str(SCRIPT), "--seeds", str(seeds), "--output_dir", str(out), "--config", str(config), "--no_progress"]


def _interrupt_after(proc: subprocess.Popen, server: LoopbackOpenAIServer, requests: int, sig: int) -> None:
    deadline = time.monotonic() + 120
    while server.stats().total < requests:
        if proc.poll() is not None:
            raise AssertionError(f"the builder finished before it could be interrupted: {proc.communicate()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("the builder made too few requests within 120 s")
        time.sleep(0.005)
    proc.send_signal(sig)
    proc.wait(timeout=60)


def _images(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT, signal.SIGTERM], ids=["sigkill", "ctrl-c", "sigterm"])
def test_an_interrupted_run_resumes_without_losing_duplicating_or_repeating_anything(tmp_path, sig):
    with (
        LoopbackOpenAIServer(ScriptedBuilderModels(), FaultPlan(latency_s=0.04), record_last=100_000) as chat,
        LoopbackImagesServer(faults=ImagesFaultPlan(latency_s=0.04)) as images,
    ):
        seeds = write_seeds(tmp_path, _seed_specs())
        config = write_config(tmp_path / "builder.yaml", chat.base_url, images.base_url, run={"concurrency": CONCURRENCY})

        reference = tmp_path / "reference"
        build(seeds, reference, load_config(config), progress=False)
        ref_chat, ref_images = checkpoint_shas(reference), checkpoint_shas(reference, text_to_image=True)
        total = sum(ref_chat.values())
        assert total > 100 and sum(ref_images.values()) == 2 * VICTIMS

        chat.reset_stats()
        images_seen = len(images.requests())
        out = tmp_path / "out"
        proc = subprocess.Popen(_command(seeds, out, config), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _interrupt_after(proc, chat, int(total * 0.4), sig)
        stderr = proc.stderr.read()
        if sig == signal.SIGKILL:
            assert proc.returncode == -signal.SIGKILL
        else:
            assert proc.returncode == 130, stderr
            assert "interrupted: every finished call is checkpointed" in stderr, stderr

        before_chat, before_images = checkpoint_shas(out), checkpoint_shas(out, text_to_image=True)
        sent_before = chat.stats().total
        assert 0 < sum(before_chat.values()) < total
        in_flight_lost = sent_before - sum(before_chat.values())
        assert 0 <= in_flight_lost <= CONCURRENCY * VICTIMS

        chat.reset_stats()
        images_seen = len(images.requests())
        resumed = subprocess.run(_command(seeds, out, config), cwd=REPO, capture_output=True, text=True, timeout=300)
        assert resumed.returncode == 0, resumed.stderr
        assert "Read 8 seeds = 8 valid + 0 rejected" in resumed.stdout

        after_chat = server_shas(chat.last_requests())
        after_images = image_server_shas(images.requests()[images_seen:])
        # every call made exactly as often as in the uninterrupted run: none finished before was repeated
        assert before_chat + after_chat == ref_chat
        assert before_images + after_images == ref_images
        assert checkpoint_shas(out) == ref_chat
        # the output is the uninterrupted run's, with no dialogue lost or duplicated
        assert (out / "intersafe_v.jsonl").read_bytes() == (reference / "intersafe_v.jsonl").read_bytes()
        ids = [d["id"] for d in read_jsonl(out / "intersafe_v.jsonl")]
        assert len(ids) == len(set(ids)) == 8 * VICTIMS
        assert _images(out / "images") == _images(reference / "images")
        assert Counter(p.suffix for p in (out / ".build" / "items").iterdir()) == Counter({".json": 8})
