"""The ``am3_grpo`` advantage estimator: verl's estimator signature in, token-level advantages out.

verl calls a registered estimator with ``token_level_rewards`` and ``response_mask`` ``[batch, length]``,
``index`` (the ``uid`` of each row's prompt) and ``config`` (the ``algorithm`` section). The per-turn
harmless/helpful scores ride inside ``token_level_rewards`` as :mod:`am3_verl.turn_scores` lays them out;
this module decodes them, computes the configured variant (:mod:`am3_verl.advantage.variants`) and
spreads the result over the policy tokens.

The computation of the latest call is kept for the step's ``am3/*`` metrics
(:func:`take_last_computation`), so the trainer modes log what the estimator computed instead of
computing it a second time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from am3_verl.advantage.config import Am3AdvantageConfig, resolve_am3_config
from am3_verl.advantage.groups import group_ids
from am3_verl.advantage.variants import VARIANT_FUNCTIONS, TurnBatch, VariantResult, whiten_rollouts
from am3_verl.advantage.weights import rollout_turn_weights, turn_statistics
from am3_verl.turn_scores import DecodedTurnScores, decode_batch

ESTIMATOR_NAME = "am3_grpo"
"""``algorithm.adv_estimator`` value that selects :func:`compute_am3_grpo_advantage`."""


@dataclass
class Am3Computation:
    """Everything the estimator computed for a batch (the metrics reuse it)."""

    decoded: DecodedTurnScores
    turns: TurnBatch
    result: VariantResult
    index: list[Any]
    """The ``uid`` of each row, in row order (to check that metrics read the same rows)."""


_last_computation: Am3Computation | None = None


def take_last_computation() -> Am3Computation | None:
    """The computation of the latest :func:`compute_am3_grpo_advantage` call in this process, once.

    Returns None when the estimator has not run since the previous take. verl's V1 trainer computes a
    step's advantages and then its metrics in the same process, one step at a time.
    """
    global _last_computation
    computation, _last_computation = _last_computation, None
    return computation


def check_scores(decoded: DecodedTurnScores) -> None:
    """Raise ``ValueError`` naming the row and turn of the first judged score outside [0, 1].

    Such a value means the row does not follow :mod:`am3_verl.turn_scores` (e.g. a KL penalty or a
    scalar reward was added to ``token_level_rewards``).
    """
    for name, values in (("harmless", decoded.harmless), ("helpful", decoded.helpful)):
        bad = decoded.valid & ~((values >= 0.0) & (values <= 1.0))
        if bool(bad.any()):
            row, turn = (int(v) for v in bad.nonzero()[0])
            raise ValueError(
                f"am3_grpo: token_level_rewards row {row}, turn {turn}: {name} score {float(values[row, turn])!r} "
                "is outside [0, 1]; rows must carry per-turn scores as am3_verl.turn_scores lays them out "
                "(DialogueAgentLoopOutput on the V1 trainer, algorithm.use_kl_in_reward=False)"
            )


def compute_am3(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: Any,
    cfg: Am3AdvantageConfig,
    norm_adv_by_std_in_grpo: bool = True,
    epsilon: float = 1e-6,
) -> Am3Computation:
    """Decode the per-turn scores and compute the variant named by ``cfg.variant``, without broadcasting."""
    decoded = decode_batch(token_level_rewards, response_mask)
    check_scores(decoded)
    batch_size = token_level_rewards.shape[0]
    ids, num_groups = group_ids(index, batch_size, device=token_level_rewards.device)
    stats = turn_statistics(decoded.harmless, decoded.valid, ids, num_groups, cfg.tau, cfg.lambda_, cfg.temperature)
    turns = TurnBatch(
        harmless=decoded.harmless.to(torch.float64),
        helpful=decoded.helpful.to(torch.float64),
        valid=decoded.valid,
        ids=ids,
        num_groups=num_groups,
        stats=stats,
        weights=rollout_turn_weights(stats, ids, decoded.valid, cfg.temperature),
    )
    result = VARIANT_FUNCTIONS[cfg.variant](turns, cfg, norm_adv_by_std_in_grpo, epsilon)
    labels = np.asarray(index, dtype=object).reshape(-1).tolist()
    return Am3Computation(decoded=decoded, turns=turns, result=result, index=labels)


def spread_over_turns(per_turn: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """float32 ``[batch, length]``: each policy token gets its turn's value from ``per_turn`` ``[batch, turns]``.

    A turn is a maximal run of ``mask`` (bool); positions where ``mask`` is False get 0.
    """
    if per_turn.shape[1] == 0 or mask.shape[1] == 0:
        return torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
    starts = torch.empty_like(mask)
    starts[:, 0] = mask[:, 0]
    torch.gt(mask[:, 1:], mask[:, :-1], out=starts[:, 1:])
    # Running count of turn starts = 1 + index of the current turn; uint8 is the fast path below 255 turns.
    if per_turn.shape[1] < 255:
        count = torch.cumsum(starts.view(torch.uint8), dim=1, dtype=torch.uint8)
    else:
        count = torch.cumsum(starts, dim=1, dtype=torch.int32)
    turn = count.long().sub_(1).clamp_(min=0)
    return torch.gather(per_turn.to(torch.float32), 1, turn).masked_fill_(~mask, 0.0)


def compute_am3_grpo_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: Any = None,
    epsilon: float = 1e-6,
    norm_adv_by_std_in_grpo: bool | None = None,
    config: Any = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """AM3 turn-aware dual-objective GRPO advantage (docs/method.md eqs. 6-9); returns ``(advantages, returns)``.

    Both outputs are the same float32 ``[batch, length]`` tensor, 0 on every position where
    ``response_mask`` is 0. ``config`` is verl's ``algorithm`` config: settings come from
    ``algorithm.am3`` (:class:`am3_verl.advantage.config.Am3AdvantageConfig`), and
    ``norm_adv_by_std_in_grpo`` from the argument or else ``algorithm.norm_adv_by_std_in_grpo`` (verl's
    ``compute_advantage`` does not pass it to registered estimators). Raises ``ValueError`` when
    ``algorithm.use_kl_in_reward`` is on, when ``index`` is missing, or when a row does not carry
    per-turn scores in [0, 1]. Other keyword arguments verl may pass are ignored.
    """
    global _last_computation
    cfg = resolve_am3_config(config)
    if norm_adv_by_std_in_grpo is None:
        norm_adv_by_std_in_grpo = bool(config.get("norm_adv_by_std_in_grpo", True)) if config is not None else True
    with torch.no_grad():
        mask = response_mask.bool()
        computation = compute_am3(token_level_rewards, mask, index, cfg, norm_adv_by_std_in_grpo, epsilon)
        result = computation.result
        if result.per_turn is not None:
            advantages = spread_over_turns(result.per_turn, mask)
        else:
            per_rollout = result.per_rollout
            if result.whiten:
                scored = computation.turns.scored
                per_rollout = whiten_rollouts(per_rollout, mask.sum(dim=1) * scored)
            advantages = torch.where(mask, per_rollout.to(torch.float32).unsqueeze(-1), 0.0)
    _last_computation = computation
    return advantages, advantages
