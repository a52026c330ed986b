"""Is the rollout serving the actor's weights? The per-step check, in both of verl's log-prob modes.

The check compares, on the step's own sampled tokens, the log-probs the rollout backend reported with
the actor's log-probs under the weights it synced to the rollout before the step. Equal weights and
numerics give ~0; a rollout that kept older weights gives a gap from the first step after an update.

* **Recomputed old log-probs** (verl's default): the actor recomputes ``old_log_probs`` before the
  update, so ``am3/sync/logprob_abs_diff/{max,mean}`` is the per-token |rollout - actor| gap
  (:func:`am3_verl.advantage.metrics.logprob_agreement_metrics`).
* **Bypass mode** (``algorithm.rollout_correction.bypass_mode=True``): verl skips that pass and copies the
  rollout's log-probs into ``old_log_probs``, so the per-token gap is 0 by construction and blind. The
  actor still computes its own log-probs of every token in its update, and verl's policy loss logs
  ``actor/ppo_kl``, the token mean of ``old - current`` = rollout - actor log-prob. Before the first
  optimizer step of the step those are the synced weights' log-probs, so when the step's update is one
  mini-batch of one epoch (``ppo_mini_batch_size >= data.train_batch_size``, ``ppo_epochs=1``) every
  token is scored before any weight changes, and ``actor/ppo_kl`` estimates KL(rollout policy || actor)
  on the rollout's own samples: ~0 in sync (rounding only), and away from 0 when the rollout is stale
  (non-negative in expectation, but a mean over the step's tokens, so its sign is noisy: read its size).
  It is reported as ``am3/sync/bypass_kl``. With several mini-batches or epochs the later ones score updated weights, the
  figure no longer measures the sync, and none is reported (:func:`sync_check_mode` says why).
"""

from __future__ import annotations

from typing import Any, Mapping

RECOMPUTED = "recomputed"
"""The actor recomputes old log-probs: the per-token gap is the check."""
BYPASS_UPDATE = "bypass_update"
"""Bypass mode with one mini-batch of one epoch: the update's ``actor/ppo_kl`` is the check."""

BYPASS_KL = "am3/sync/bypass_kl"
"""Step metric of bypass runs: KL(rollout || actor) estimated on the step's tokens (see the module docstring)."""
VERL_PPO_KL = "actor/ppo_kl"


def is_bypass(config: Any) -> bool:
    """Whether verl copies the rollout's log-probs into ``old_log_probs`` (``rollout_correction.bypass_mode``)."""
    rollout_correction = config.algorithm.get("rollout_correction", None)
    return bool(rollout_correction and rollout_correction.get("bypass_mode", False))


def sync_check_mode(config: Any) -> tuple[str | None, str]:
    """``(mode, why)``: :data:`RECOMPUTED`, :data:`BYPASS_UPDATE`, or None when no check is possible.

    ``config`` is verl's whole trainer config; ``why`` explains the choice in one sentence (for the log).
    """
    if not is_bypass(config):
        return RECOMPUTED, "the actor recomputes old log-probs: am3/sync/logprob_abs_diff compares them with the rollout's"
    actor = config.actor_rollout_ref.actor
    epochs, mini_batch, batch = int(actor.ppo_epochs), int(actor.ppo_mini_batch_size), int(config.data.train_batch_size)
    if epochs == 1 and mini_batch >= batch:
        return BYPASS_UPDATE, f"bypass mode with one mini-batch of one epoch: {BYPASS_KL} is the update's {VERL_PPO_KL}"
    return None, (
        f"bypass mode with ppo_epochs={epochs} and ppo_mini_batch_size={mini_batch} < data.train_batch_size={batch} "
        "scores later mini-batches with updated weights, so no step metric checks the weight sync; use one mini-batch "
        "of one epoch, or turn bypass mode off, to have it"
    )


def bypass_sync_metrics(verl_metrics: Mapping[str, Any]) -> dict[str, float]:
    """``{am3/sync/bypass_kl: ...}`` from verl's step metrics; raises ``KeyError`` if the update logged no ppo_kl."""
    if VERL_PPO_KL not in verl_metrics:
        raise KeyError(f"the step's metrics lack {VERL_PPO_KL!r} (verl's policy loss), which the bypass-mode sync check reads")
    return {BYPASS_KL: float(verl_metrics[VERL_PPO_KL])}
