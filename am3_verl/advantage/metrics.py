"""Training-time metrics of the AM3 reward: scores, attack success, refusals, judge failures, turn weights.

:func:`am3_metrics` reads what the estimator computed for a batch (:class:`Am3Computation`: the
decoded per-turn scores, the turn weights, the rollout rewards) plus, for the refusal rate, each
rollout's :class:`~am3_verl.turn_scores.TurnScores` record; :func:`compute_am3_metrics` computes that
from the rows first, for callers outside a training step. Every key starts with ``am3/``; the V1 trainer modes in :mod:`am3_verl.advantage.trainer_modes` add them to
each training step's metrics. The list of keys and their meaning is in docs/advantage.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from am3_verl.advantage.config import Am3AdvantageConfig
from am3_verl.advantage.estimator import Am3Computation, compute_am3
from am3_verl.asr import attack_success_rate, is_unsafe
from am3_verl.turn_scores import EXTRA_INFO_KEY, TurnScores, load_turn_scores


def turn_scores_record(extra_fields: Any) -> TurnScores | None:
    """The :class:`TurnScores` a rollout's reward function stored, from its ``extra_fields``; None if absent."""
    if not isinstance(extra_fields, dict):
        return None
    info = extra_fields.get("reward_extra_info") or {}
    encoded = info.get(EXTRA_INFO_KEY) if isinstance(info, dict) else None
    return None if encoded is None else load_turn_scores(encoded)


def _mean(values: torch.Tensor) -> float:
    return float(values.to(torch.float64).mean()) if values.numel() else float("nan")


def compute_am3_metrics(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: Any,
    cfg: Am3AdvantageConfig,
    records: Sequence[TurnScores | None] | None = None,
) -> dict[str, float]:
    """``am3/*`` metrics of one batch of rollouts (rows as the estimator receives them); see :func:`am3_metrics`."""
    return am3_metrics(compute_am3(token_level_rewards, response_mask, index, cfg), cfg, records)


def am3_metrics(
    computation: Am3Computation,
    cfg: Am3AdvantageConfig,
    records: Sequence[TurnScores | None] | None = None,
    rows: torch.Tensor | None = None,
) -> dict[str, float]:
    """``am3/*`` metrics of the rows of ``computation`` selected by ``rows`` (bool ``[batch]``; None: all).

    ``records`` (one per selected row, or None) gives the judge's refusal flags; a record whose number of
    turns differs from the row's raises ``ValueError`` naming the row. Means over an empty set are NaN
    (e.g. ``am3/harmless/mean`` when no turn was judged) rather than a made-up 0. Rows left out are
    excluded from every figure; they must form their own groups (verl's padding rows do).
    """
    decoded, turns = computation.decoded, computation.turns
    keep = torch.ones(decoded.valid.shape[0], dtype=torch.bool) if rows is None else rows.to(torch.bool)
    keep = keep.to(decoded.valid.device)
    harmless, helpful = decoded.harmless[keep], decoded.helpful[keep]
    valid, exists, num_turns = decoded.valid[keep], decoded.exists[keep], decoded.num_turns[keep]
    reward = computation.result.reward[keep]
    scored = valid.any(dim=1)
    has_turns = exists.any(dim=1)
    unsafe = valid & is_unsafe(harmless, cfg.unsafe_threshold)

    metrics: dict[str, float] = {
        "am3/harmless/mean": _mean(harmless[valid]),
        "am3/helpful/mean": _mean(helpful[valid]),
        "am3/reward/mean": _mean(reward[scored]),
        "am3/asr": attack_success_rate(harmless[valid], cfg.unsafe_threshold),
        "am3/dialogue_asr": _mean(unsafe.any(dim=1)[scored].float()),
        "am3/judge_failed_turns": float((exists & ~valid).sum()),
        "am3/judge_failure_rate": _mean((~valid)[exists].float()),
        "am3/unscored_rollouts": float((has_turns & ~scored).sum()),
        "am3/rollouts_without_turns": float((~has_turns).sum()),
        "am3/assistant_turns/mean": _mean(num_turns.float()),
        "am3/groups/mixed_length_fraction": _mixed_length_fraction(turns.ids[keep], num_turns),
    }
    metrics.update(_refusal_metrics(records, num_turns, valid))
    metrics.update(_alpha_metrics(turns.stats.alpha, turns.stats.present))
    return metrics


def _mixed_length_fraction(ids: torch.Tensor, num_turns: torch.Tensor) -> float:
    """Share of prompt groups (the estimator's dense ``ids``) whose rollouts reached different numbers of turns.

    In such a group turn t's statistics come from the rollouts that reached turn t only (docs/method.md).
    """
    distinct = torch.unique(torch.stack([ids, num_turns.to(ids.dtype)]), dim=1)  # one column per (group, length)
    lengths_per_group = torch.bincount(distinct[0])
    return _mean((lengths_per_group[lengths_per_group > 0] > 1).float())


def _refusal_metrics(records: Sequence[TurnScores | None] | None, num_turns: torch.Tensor, valid: torch.Tensor) -> dict[str, float]:
    if records is None:
        return {}
    if len(records) != num_turns.shape[0]:
        raise ValueError(f"compute_am3_metrics: {len(records)} turn-score records for {num_turns.shape[0]} rows")
    refused = judged = unknown = 0
    for row, record in enumerate(records):
        if record is None or not record.refused:
            unknown += 1
            continue
        if len(record) != int(num_turns[row]):
            raise ValueError(
                f"compute_am3_metrics: row {row}: its {EXTRA_INFO_KEY} record has {len(record)} turns but the "
                f"response has {int(num_turns[row])} assistant turns"
            )
        for turn, flag in enumerate(record.refused):
            if bool(valid[row, turn]):
                judged += 1
                refused += int(flag)
    return {
        "am3/refusal_rate": refused / judged if judged else float("nan"),
        "am3/refusal_unknown_rollouts": float(unknown),
    }


UNIFORM_ALPHA_ATOL = 1e-9
"""Turn weights of a group closer than this (float64) count as uniform in ``am3/alpha/nonuniform_group_fraction``."""


def _alpha_metrics(alpha: torch.Tensor, present: torch.Tensor) -> dict[str, float]:
    """Turn-weight metrics over the groups with a present turn; ``nonuniform_group_fraction`` over those with two or more.

    A group's weights are uniform when eq. 7's ``U`` is equal at all its turns (e.g. every rollout harmless at
    every turn); then, with same-length rollouts, the ``paper`` reward is the mean of the turn rewards and
    ``am3_grpo`` gives the advantages of plain ``grpo`` on the same rows (docs/method.md).
    """
    groups = present.any(dim=1)
    alpha, present = alpha[groups], present[groups]
    log_alpha = torch.log(alpha.clamp_min(torch.finfo(alpha.dtype).tiny))
    entropy = -(torch.where(present, alpha * log_alpha, torch.zeros_like(alpha))).sum(dim=1)
    num_present = present.sum(dim=1)
    several = num_present >= 2
    lowest = alpha.masked_fill(~present, float("inf")).min(dim=1).values
    nonuniform = (alpha.max(dim=1).values - lowest) > UNIFORM_ALPHA_ATOL
    metrics = {
        "am3/alpha/entropy/mean": _mean(entropy),
        "am3/alpha/normalized_entropy/mean": _mean(entropy[several] / torch.log(num_present[several].double())),
        "am3/alpha/max_weight/mean": _mean(alpha.max(dim=1).values),
        "am3/alpha/nonuniform_group_fraction": _mean(nonuniform[several].float()),
    }
    for turn in range(alpha.shape[1]):
        metrics[f"am3/alpha/turn_{turn + 1}/mean"] = _mean(alpha[present[:, turn], turn])
    return metrics


def logprob_agreement_metrics(
    rollout_log_probs: torch.Tensor, old_log_probs: torch.Tensor, response_mask: torch.Tensor
) -> dict[str, float]:
    """How far the rollout backend's token log-probs are from the actor's recomputed ``old_log_probs``.

    Per policy token (``response_mask`` 1): ``am3/sync/logprob_abs_diff/max`` and ``/mean``. With the
    weights synced every step and the same numerics they are ~0; a stale rollout model shows up here
    from the second step on.
    """
    mask = response_mask.bool()
    diff = (rollout_log_probs.to(torch.float64) - old_log_probs.to(torch.float64)).abs()[mask]
    if not diff.numel():
        return {}
    return {"am3/sync/logprob_abs_diff/max": float(diff.max()), "am3/sync/logprob_abs_diff/mean": float(diff.mean())}
