"""The tiny CPU recipe through ``python -m verl.trainer.main_ppo`` with ``AM3_LOGGER=console,file,tensorboard``:
verl's own TensorBoard tracker (offline, a local event file) receives the ``am3/*`` training scalars and,
with ``trainer.log_val_generations``, the validation replies as text. Nothing is mocked (see test_ppo_main)."""

from __future__ import annotations

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ppo_helpers import run_tiny_recipe

pytestmark = pytest.mark.slow

AM3_SCALARS = {"am3/harmless/mean", "am3/helpful/mean", "am3/reward/mean", "am3/asr", "am3/alpha/turn_1/mean",
               "am3/judge_failure_rate"}  # fmt: skip


def _tags(folder) -> tuple[dict[str, list], set[str]]:
    """Scalar tag -> [(step, value)] and text tags over every event file verl's writers left in ``folder``."""
    scalars: dict[str, list] = {}
    texts: set[str] = set()
    for event_file in sorted(folder.rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(event_file), size_guidance={"scalars": 0, "tensors": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
        texts.update(acc.Tags()["tensors"])
    return scalars, texts


def test_am3_scalars_and_validation_replies_reach_tensorboard(tmp_path, rl_data_dir, tiny_qwen_dir, judge_env):
    board = tmp_path / "tensorboard"
    run = run_tiny_recipe(
        tmp_path / "run", rl_data_dir, tiny_qwen_dir,
        "trainer.total_training_steps=1", "trainer.save_freq=-1", "trainer.test_freq=1",
        env={**judge_env, "AM3_LOGGER": "console,file,tensorboard", "TENSORBOARD_DIR": str(board)},
    ).check()  # fmt: skip
    assert "trainer.logger=[console,file,tensorboard] (from AM3_LOGGER)" in run.log
    scalars, texts = _tags(board)
    assert AM3_SCALARS <= set(scalars), AM3_SCALARS - set(scalars)
    # the same numbers as verl's file logger wrote for step 1
    for tag in AM3_SCALARS:
        assert scalars[tag] == [(1, pytest.approx(run.metrics[1][tag], rel=1e-6, abs=1e-7))]
    assert any(tag.startswith("val/generations") for tag in texts), texts
