"""V1 trainer reaches (verl 0.9.1): extra per-step metrics and a registered mode that behaves as a base mode.

* verl's ``PPOTrainer`` has no public hook for per-step training metrics; :class:`StepMetricsHook`
  extends the private ``PPOTrainer._compute_metrics`` (trainer/ppo/v1/trainer_base.py:1868), which
  every step calls after the update. A public ``on_step_metrics`` callback would remove it.
* verl branches on ``config.trainer.v1.trainer_mode == "sync"`` (and the other built-in names) inside the
  trainer, so a trainer registered under another name (``register_trainer``) would not behave as the
  mode it extends; :class:`StepMetricsHook` hands verl a copy of the config whose ``trainer_mode`` is
  the base mode (:func:`with_base_mode`). Branching on the registered class instead of the mode string
  would remove it.
* A run that must stop mid-training (its judge is gone) saves a checkpoint first through the private
  ``PPOTrainer._save_checkpoint`` (trainer/ppo/v1/trainer_base.py:948), the method verl's own loop calls
  every ``save_freq`` steps (:meth:`StepMetricsHook.save_checkpoint_now`). A public "save now" would remove it.
"""

from __future__ import annotations

import copy
from typing import Any

from omegaconf import DictConfig, open_dict


def with_base_mode(config: DictConfig, base_mode: str) -> DictConfig:
    """A copy of ``config`` whose ``trainer.v1.trainer_mode`` is ``base_mode`` (the caller's is unchanged)."""
    config = copy.deepcopy(config)
    with open_dict(config):
        config.trainer.v1.trainer_mode = base_mode
    return config


class StepMetricsHook:
    """Mixin before a verl V1 ``PPOTrainer`` subclass: runs as ``base_mode`` and adds :meth:`step_metrics` each step."""

    base_mode: str = ""
    """The verl trainer mode the subclass extends."""

    def __init__(self, config: DictConfig) -> None:
        super().__init__(config=with_base_mode(config, self.base_mode))  # type: ignore[call-arg]

    def _compute_metrics(self, batch: Any, metrics: dict, timing_raw: dict, global_steps: int, epoch: int):
        super()._compute_metrics(batch, metrics, timing_raw, global_steps, epoch)  # type: ignore[misc]
        metrics.update(self.step_metrics(batch, global_steps, metrics))

    def step_metrics(self, batch: Any, global_steps: int, verl_metrics: dict) -> dict[str, float]:
        """The metrics to add for step ``global_steps``'s ``batch`` (a ``KVBatchMeta``), given the step's metrics
        verl computed so far (``verl_metrics``: its actor-update figures included, read-only); override."""
        raise NotImplementedError

    def save_checkpoint_now(self) -> None:
        """Save a checkpoint of the current step as verl's loop does every ``save_freq`` steps (callback included)."""
        self._save_checkpoint()  # type: ignore[attr-defined]
