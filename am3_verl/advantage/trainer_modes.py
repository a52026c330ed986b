"""V1 trainer modes that log the AM3 metrics every training step: ``trainer.v1.trainer_mode=am3_sync`` etc.

verl 0.9.1's V1 trainer logs ``reward_extra_info`` only in validation. Each mode here is verl's own
trainer class (``sync``, ``colocate_async``, ``separate_async``) with one addition (through
:class:`am3_verl.compat.trainer.StepMetricsHook`, the reach into verl's trainer): after verl computes
a step's metrics, :meth:`Am3MetricsMixin.compute_am3_step_metrics` adds
:func:`am3_verl.advantage.metrics.am3_metrics` of what the ``am3_grpo`` estimator computed for the step
(handed over by :func:`am3_verl.advantage.estimator.take_last_computation`, never computed twice), with
the refusal flags and log-probs read back from the TransferQueue. Inside the trainer the
mode is reported as the base mode (verl branches on ``trainer_mode == "sync"``), so everything else
behaves exactly as the base mode does. Registered through verl's ``register_trainer``.

They also keep a long run honest (:mod:`am3_verl.training`, settings ``trainer.am3``): the judge named
in the reward kwargs is probed before the workers start; a run whose judge fails past its budget saves
a checkpoint and stops with an error that says how to continue; every saved checkpoint is marked
complete (verl's ``trainer.checkpoint_callback_class``), and ``resume_mode=auto`` resumes from the
newest complete one.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

import torch
import transfer_queue as tq
from transfer_queue import KVBatchMeta
from omegaconf import DictConfig, OmegaConf, open_dict
from verl.trainer.ppo.v1 import PPOTrainerColocateAsync, PPOTrainerSeparateAsync, PPOTrainerSync
from verl.trainer.ppo.v1.trainer_base import TRAINER_REGISTRY, register_trainer

from am3_verl.advantage.config import CONFIG_KEY, Am3AdvantageConfig
from am3_verl.advantage.estimator import ESTIMATOR_NAME, compute_am3, take_last_computation
from am3_verl.advantage.metrics import am3_metrics, logprob_agreement_metrics, turn_scores_record
from am3_verl.advantage.turn_score_dump import write_step_turn_scores
from am3_verl.compat.trainer import StepMetricsHook
from am3_verl.training import config as trainer_config
from am3_verl.training.checkpoints import CompleteCheckpointMarker, is_saved, resolve_resume_checkpoint
from am3_verl.training import weight_sync
from am3_verl.training.judge_health import (
    JudgeFailureBudget,
    JudgeUnavailable,
    failure_kinds,
    judge_config_of,
    probe_judge,
)

logger = logging.getLogger(__name__)
FAILED_ATTEMPTS_PREFIX = "am3/judge_failed_attempts/"
"""Step metrics ``am3/judge_failed_attempts/<kind>``: failed judge attempts of the step by kind (retried or final)."""
CHECKPOINT_MARKER = f"{CompleteCheckpointMarker.__module__}.{CompleteCheckpointMarker.__qualname__}"

STEP_FIELDS = ["uid", "response_mask", "extra_fields"]
"""TransferQueue fields the metrics read for each row of a step."""
SCORE_FIELDS = ["rm_scores"]
"""Read too when another estimator than ``am3_grpo`` ran, so the AM3 computation is the metrics' own."""
LOGPROB_FIELDS = ["rollout_log_probs", "old_log_probs"]
"""Read too when the step has them: the rollout-vs-actor log-prob agreement (weight-sync health)."""


def with_checkpoint_marker(config: DictConfig) -> DictConfig:
    """``config`` with ``trainer.checkpoint_callback_class`` set to :class:`CompleteCheckpointMarker` (in place).

    Raises ``ValueError`` when it names another callback: resuming safely needs the marker, so a callback of
    one's own should subclass it."""
    named = config.trainer.get("checkpoint_callback_class", None)
    if named and named != CHECKPOINT_MARKER:
        raise ValueError(
            f"trainer.checkpoint_callback_class={named}: the am3 trainer modes mark complete checkpoints with "
            f"{CHECKPOINT_MARKER}; make your callback a subclass of it and name that one"
        )
    with open_dict(config):
        config.trainer.checkpoint_callback_class = CHECKPOINT_MARKER
    return config


def checkpoint_root(config: DictConfig) -> Path:
    """``trainer.default_local_dir`` as verl resolves it (relative to the working directory)."""
    return Path.cwd() / str(config.trainer.default_local_dir)


class Am3MetricsMixin(StepMetricsHook):
    """Adds ``am3/*`` metrics to each training step, the judge probe and budget, and complete checkpoints;
    put it before a verl ``PPOTrainer`` subclass."""

    def __init__(self, config: DictConfig) -> None:
        settings = trainer_config.Am3TrainerConfig.from_mapping(config.trainer.get(trainer_config.CONFIG_KEY, None))
        reward_kwargs = config.reward.custom_reward_function.get("reward_kwargs", None)
        self.am3_judge = judge_config_of(OmegaConf.to_container(reward_kwargs, resolve=True) if reward_kwargs else None)
        self.am3_judge_budget = JudgeFailureBudget(settings.max_judge_failure_rate, settings.max_judge_failed_steps)
        if settings.probe_judge and self.am3_judge is not None:
            probe_judge(self.am3_judge)
            logger.info("am3 judge answered the startup probe: %s", self.am3_judge.describe())
        if config.trainer.resume_mode == "auto":
            resolve_resume_checkpoint(checkpoint_root(config))
        self.am3_sync_check, why = weight_sync.sync_check_mode(config)
        (logger.info if self.am3_sync_check else logger.warning)("am3 weight-sync check: %s", why)
        super().__init__(with_checkpoint_marker(config))

    def step_metrics(self, batch: KVBatchMeta, global_steps: int, verl_metrics: dict) -> dict[str, float]:
        """See :meth:`compute_am3_step_metrics`, plus the bypass-mode weight-sync check from ``verl_metrics``
        (:mod:`am3_verl.training.weight_sync`); then applies the judge-failure budget (:meth:`check_judge_budget`)."""
        metrics = self.compute_am3_step_metrics(batch, global_steps)
        if self.am3_sync_check == weight_sync.BYPASS_UPDATE:
            metrics.update(weight_sync.bypass_sync_metrics(verl_metrics))
        self.check_judge_budget(metrics, global_steps)
        return metrics

    def check_judge_budget(self, metrics: dict[str, float], global_steps: int) -> None:
        """Count this step against the judge-failure budget; when it is spent, make sure this step is saved
        (a complete checkpoint) and raise :class:`JudgeUnavailable` saying which checkpoint to resume from."""
        kinds = Counter({key[len(FAILED_ATTEMPTS_PREFIX):]: int(value) for key, value in metrics.items()
                         if key.startswith(FAILED_ATTEMPTS_PREFIX)})  # fmt: skip
        rate = metrics.get("am3/judge_failure_rate", float("nan"))
        if not self.am3_judge_budget.observe(global_steps, rate, kinds):
            return
        root = checkpoint_root(self.config)  # type: ignore[attr-defined]
        if not is_saved(root, global_steps):  # verl's own save_freq may have saved this step already
            self.save_checkpoint_now()
        judge = self.am3_judge.describe() if self.am3_judge is not None else "the reward function's judge"
        message = self.am3_judge_budget.stop_message(judge, str(root / f"global_step_{global_steps}"))
        logger.error("am3: %s", message)
        raise JudgeUnavailable(message)

    def compute_am3_step_metrics(self, batch: KVBatchMeta, global_steps: int) -> dict[str, float]:
        """``am3/*`` metrics of the step's rows (synthetic padding rows excluded); {} if there are none.

        With ``algorithm.adv_estimator=am3_grpo`` they come from the estimator's computation of this step;
        a step whose estimator did not hand one over for exactly these rows raises ``RuntimeError``.
        With ``trainer.rollout_data_dir`` set, the rows' per-turn scores are also dumped there
        (:mod:`am3_verl.advantage.turn_score_dump`).
        """
        real = [not tag.get("is_padding", False) for tag in batch.tags]
        if not any(real):
            return {}
        config = self.config  # type: ignore[attr-defined]
        ran_am3 = config.algorithm.adv_estimator == ESTIMATOR_NAME
        # Like verl's own metrics, ask for optional fields and use those the step has.
        fields = STEP_FIELDS + LOGPROB_FIELDS + ([] if ran_am3 else SCORE_FIELDS)
        data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=fields)
        with_logprobs = set(LOGPROB_FIELDS) <= set(data.keys())
        uid = data.pop("uid").tolist()
        extra_fields = data.pop("extra_fields").tolist()
        padded = data.to_padded_tensor()
        cfg = Am3AdvantageConfig.from_mapping(config.algorithm.get(CONFIG_KEY, None))
        if ran_am3:
            computation = take_last_computation()
            if computation is None or computation.index != uid:
                raise RuntimeError(
                    f"{type(self).__name__}: the am3_grpo estimator did not compute this step's {len(uid)} rows "
                    "in this process before the step's metrics; am3/* metrics are the estimator's own figures"
                )
        else:
            computation = compute_am3(padded["rm_scores"], padded["response_mask"], uid, cfg)
        rows = torch.tensor(real)
        records = [turn_scores_record(extra) for extra, keep in zip(extra_fields, real) if keep]
        metrics = am3_metrics(computation, cfg, records, rows=rows)
        infos = [extra.get("reward_extra_info") for extra, keep in zip(extra_fields, real) if keep and isinstance(extra, dict)]
        for kind, count in failure_kinds(infos).items():
            metrics[FAILED_ATTEMPTS_PREFIX + kind] = float(count)
        rollout_data_dir = config.trainer.get("rollout_data_dir", None)
        if rollout_data_dir:
            write_step_turn_scores(rollout_data_dir, global_steps, computation.decoded, uid, rows)
        # In bypass mode old_log_probs are the rollout's own: the gap would be 0 whatever the weights.
        if with_logprobs and self.am3_sync_check == weight_sync.RECOMPUTED:
            mask = padded["response_mask"][rows]
            metrics.update(logprob_agreement_metrics(padded["rollout_log_probs"][rows], padded["old_log_probs"][rows], mask))
        return metrics


class Am3PPOTrainerSync(Am3MetricsMixin, PPOTrainerSync):
    """verl's ``sync`` trainer plus per-step ``am3/*`` metrics (``trainer.v1.trainer_mode=am3_sync``)."""

    base_mode = "sync"


class Am3PPOTrainerColocateAsync(Am3MetricsMixin, PPOTrainerColocateAsync):
    """verl's ``colocate_async`` trainer plus per-step ``am3/*`` metrics (``trainer_mode=am3_colocate_async``)."""

    base_mode = "colocate_async"


class Am3PPOTrainerSeparateAsync(Am3MetricsMixin, PPOTrainerSeparateAsync):
    """verl's ``separate_async`` trainer plus per-step ``am3/*`` metrics (``trainer_mode=am3_separate_async``)."""

    base_mode = "separate_async"


TRAINER_MODES: dict[str, type[Any]] = {
    "am3_sync": Am3PPOTrainerSync,
    "am3_colocate_async": Am3PPOTrainerColocateAsync,
    "am3_separate_async": Am3PPOTrainerSeparateAsync,
}
"""``trainer.v1.trainer_mode`` value -> trainer class."""


def register() -> None:
    """Register :data:`TRAINER_MODES` with verl's V1 trainer registry (idempotent)."""
    for name, cls in TRAINER_MODES.items():
        register_trainer(name)(cls)


def missing_registrations() -> list[str]:
    """The trainer modes of :data:`TRAINER_MODES` that verl's registry does not hold."""
    return [f"trainer mode {name!r}" for name, cls in TRAINER_MODES.items() if TRAINER_REGISTRY.get(name) is not cls]
