"""A run whose judge is gone stops loudly and loses nothing, through ``python -m verl.trainer.main_ppo``.

One chain of real runs on one checkpoint folder (the tiny CPU recipe, the ``openai`` judge backend
against a loopback judge on 127.0.0.1 whose faults the test switches between runs):

1. **killed while saving**: the process writing checkpoints (verl's ``TaskRunner`` actor) and the driver get
   SIGKILL as soon as step 2's checkpoint folder appears;
2. **judge down**: the rerun (``resume_mode=auto``) resumes from a complete checkpoint, never the partial
   one; the judge answers the startup probe, then HTTP 500 to everything: after 2 failed steps the run
   saves a checkpoint and stops with an error naming the judge, the failure kinds and that checkpoint;
3. **judge back, briefly down mid-step**: the rerun resumes from that checkpoint; the step's first
   judge calls get HTTP 500 and are retried through, so the step completes with no failed turn.

And a wrong API key stops the run at the startup probe, before any rollout.
"""

import contextlib
import itertools
import json
import os
import re
import signal
import threading
import time
from pathlib import Path

import pytest

from am3_verl.testing.openai_server import FaultPlan, LoopbackOpenAIServer
from am3_verl.training.checkpoints import TRACKER, incompleteness
from am3_verl.training.judge_health import PROBE_USER_TEXT
from ppo_helpers import SpreadJudgeResponder, run_tiny_recipe

pytestmark = pytest.mark.slow

SHORT_RUN = ("trainer.test_freq=-1", "trainer.total_epochs=100")
BRIEF_OUTAGE_CALLS = 6
"""Judge calls of the last run's step answered with HTTP 500 before the judge comes back."""


def is_probe(body) -> bool:
    return PROBE_USER_TEXT in json.dumps(body)


def judge_down_after_the_probe(index, body):
    return "ok" if is_probe(body) else "http_500"


def briefly_down(calls: int):
    """A schedule that fails the first ``calls`` non-probe requests with HTTP 500, then serves normally."""
    failed = itertools.count()
    lock = threading.Lock()

    def schedule(index, body):
        if is_probe(body):
            return "ok"
        with lock:
            return "http_500" if next(failed) < calls else "ok"

    return schedule


def task_runner_pid(log: str) -> int | None:
    """The pid of the run's ``TaskRunner``, the Ray actor that drives training and writes checkpoints."""
    found = re.search(r"\(TaskRunnerV1 pid=(\d+)\)", log)
    return int(found.group(1)) if found else None


def kill_when_saving(folder, log_path):
    """A watcher that SIGKILLs the process writing checkpoints (the ``TaskRunner``) and the driver the moment
    ``folder`` (a checkpoint being written) appears: the save is cut short, as when a node dies mid-save."""

    def watch(process):
        while process.poll() is None:
            if folder.is_dir():
                saver = task_runner_pid(log_path.read_text(errors="replace"))
                if saver is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(saver, signal.SIGKILL)
                os.kill(process.pid, signal.SIGKILL)
                return
            time.sleep(0.005)

    return watch


def wait_for_the_saver_to_die(log: str, timeout_s: float = 60.0) -> None:
    """Wait until the killed run's ``TaskRunner`` (the Ray actor that writes checkpoints, a process of its own)
    has exited; SIGKILL it if Ray has not reaped it by ``timeout_s``.

    Killing the driver does not stop that actor at once: it can still finish the save it was in, so the
    checkpoint folder is only final once the actor is gone.
    """
    pid = task_runner_pid(log)
    assert pid is not None, "the killed run's log names no TaskRunner process"

    def alive() -> bool:  # a zombie (exited, not yet reaped) counts as gone
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return False
        return state != "Z"

    deadline = time.monotonic() + timeout_s
    while alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    if alive():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    while alive():
        time.sleep(0.1)


@pytest.fixture(scope="module")
def outage_judge():
    with LoopbackOpenAIServer(responder=SpreadJudgeResponder(), model="outage-judge") as server:
        yield server


@pytest.fixture(scope="module")
def chain(tmp_path_factory, rl_data_dir, tiny_qwen_dir, outage_judge):
    root = tmp_path_factory.mktemp("judge-outage")
    checkpoints = root / "checkpoints"
    env = {"AM3_JUDGE_BACKEND": "openai", "AM3_JUDGE_BASE_URL": outage_judge.base_url, "AM3_JUDGE_MODEL": outage_judge.model}

    def run(name, *overrides, watch=None):
        return run_tiny_recipe(root / name, rl_data_dir, tiny_qwen_dir, *SHORT_RUN, *overrides, env=env,
                               checkpoints=checkpoints, watch=watch)  # fmt: skip

    killed = run("killed", "trainer.total_training_steps=4", "trainer.save_freq=1",
                 watch=kill_when_saving(checkpoints / "global_step_2" / "actor", root / "killed" / "main_ppo.log"))  # fmt: skip
    wait_for_the_saver_to_die(killed.log)
    after_kill = {path.name: incompleteness(path) for path in checkpoints.glob("global_step_*")}
    resumed_step = 2 if after_kill.get("global_step_2") is None else 1

    outage_judge.set_faults(FaultPlan(schedule=judge_down_after_the_probe))
    down = run("down", "trainer.total_training_steps=8", "trainer.save_freq=-1")
    resumed_from = re.search(r"Resuming from \S*global_step_(\d+), setting global step", down.log)
    stop_step = resumed_step + 2

    outage_judge.set_faults(FaultPlan(schedule=briefly_down(BRIEF_OUTAGE_CALLS)))
    before = outage_judge.stats()
    back = run("back", f"trainer.total_training_steps={stop_step + 1}", "trainer.save_freq=-1")
    served = outage_judge.stats()
    return {
        "killed": killed, "after_kill": after_kill, "resumed_step": resumed_step, "down": down, "stop_step": stop_step,
        "down_resumed_from": int(resumed_from.group(1)) if resumed_from else None,
        "back": back, "back_faults": served.faults["http_500"] - before.faults["http_500"],
        "judge_url": outage_judge.base_url, "checkpoints": checkpoints,
    }  # fmt: skip


def test_a_driver_killed_while_saving_leaves_no_checkpoint_that_looks_complete(chain):
    assert chain["killed"].returncode == -signal.SIGKILL, chain["killed"].log[-3000:]
    assert 1 in chain["killed"].metrics and 2 not in chain["killed"].metrics
    assert chain["after_kill"]["global_step_1"] is None  # step 1's save finished and is marked complete
    # step 2's save was cut short: its folder holds the actor's files but is not marked complete
    assert "no am3_complete.json" in (chain["after_kill"].get("global_step_2") or "complete"), chain["after_kill"]


def test_the_rerun_resumes_from_a_complete_checkpoint_and_stops_when_the_judge_is_gone(chain):
    down, resumed, stop = chain["down"], chain["resumed_step"], chain["stop_step"]
    assert down.returncode != 0
    assert chain["down_resumed_from"] == resumed  # the newest complete checkpoint once the killed run was gone
    assert sorted(down.metrics) == [resumed + 1]  # resumed; the second failed step raised before it was logged
    assert down.metrics[resumed + 1]["am3/judge_failure_rate"] > 0.5
    assert down.metrics[resumed + 1]["am3/judge_failed_attempts/http_5xx"] > 0
    checkpoint = chain["checkpoints"] / f"global_step_{stop}"
    for part in ("failed on more than 20% of turns for 2 steps in a row", "http_5xx", chain["judge_url"],
                 f"Checkpoint saved at the stop: {checkpoint}", "resume_mode=auto"):  # fmt: skip
        assert part in down.log, part
    assert incompleteness(checkpoint) is None
    assert (chain["checkpoints"] / TRACKER).read_text().strip() == str(stop)


def test_the_next_rerun_resumes_from_the_stop_and_retries_through_a_brief_outage(chain):
    back, stop = chain["back"].check(), chain["stop_step"]
    assert sorted(back.metrics) == [stop + 1]
    metrics = back.metrics[stop + 1]
    assert chain["back_faults"] == BRIEF_OUTAGE_CALLS
    assert metrics["am3/judge_failed_attempts/http_5xx"] == BRIEF_OUTAGE_CALLS  # seen and retried...
    assert metrics["am3/judge_failure_rate"] == 0.0  # ...not counted as failures
    assert metrics["actor/kl_loss"] > 0  # the resumed weights differ from the reference


def test_a_wrong_api_key_stops_the_run_before_any_rollout(tmp_path, rl_data_dir, tiny_qwen_dir):
    with LoopbackOpenAIServer(responder=SpreadJudgeResponder(), model="keyed-judge", api_key="sk-right-4f1c") as server:
        env = {"AM3_JUDGE_BACKEND": "openai", "AM3_JUDGE_BASE_URL": server.base_url, "AM3_JUDGE_MODEL": server.model,
               "AM3_JUDGE_API_KEY": "sk-wrong-9d2e"}  # fmt: skip
        run = run_tiny_recipe(tmp_path, rl_data_dir, tiny_qwen_dir, *SHORT_RUN, "trainer.total_training_steps=2", env=env)
        requests = server.stats().total
        url = server.base_url
    assert run.returncode != 0
    assert requests == 1  # the probe, not retried (401)
    assert "failed the startup probe" in run.log and "HTTP 401" in run.log and url in run.log
    assert "sk-wrong-9d2e" not in run.log
    assert run.metrics == {} and not run.checkpoints.exists()
