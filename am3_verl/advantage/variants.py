"""The rollout reward (docs/method.md eq. 9) and its advantage, in the paper's form and four variants.

Every variant receives the same :class:`TurnBatch` (per-turn scores of the batch, the prompt groups and
the eq. 6-8 statistics) and returns :class:`VariantResult`: either one advantage per rollout, spread
over all of the rollout's policy tokens, or (``turn_credit``) one advantage per turn, spread over that
turn's tokens. Common rules, whatever the variant:

* only judged turns count (``valid``); a rollout with no judged turn gets advantage 0 and is left out
  of its group's statistics (``scored`` is False);
* a group with fewer than two scored rollouts gets advantage 0 (no baseline to compare against);
* group normalisation is GRPO's (:func:`am3_verl.advantage.groups.group_normalize`):
  ``(r - mean) / (std + epsilon)``, or ``r - mean`` when ``algorithm.norm_adv_by_std_in_grpo=False``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from am3_verl.advantage.config import Am3AdvantageConfig
from am3_verl.advantage.groups import group_normalize
from am3_verl.advantage.weights import TurnStatistics


@dataclass
class TurnBatch:
    """What a variant needs; per-turn tensors are ``[batch, turns]`` (float64 / bool)."""

    harmless: torch.Tensor
    helpful: torch.Tensor
    valid: torch.Tensor
    ids: torch.Tensor
    """``[batch]`` dense prompt-group ids."""
    num_groups: int
    stats: TurnStatistics
    """eqs. 6-8 per group (see :mod:`am3_verl.advantage.weights`)."""
    weights: torch.Tensor
    """``[batch, turns]`` each rollout's eq. 8 weights, renormalised over its judged turns."""

    @property
    def scored(self) -> torch.Tensor:
        """``[batch]`` bool: the rollout has at least one judged turn."""
        return self.valid.any(dim=1)

    def uniform_weights(self) -> torch.Tensor:
        """``[batch, turns]`` equal weights over each rollout's judged turns (rows of unscored rollouts are 0)."""
        weight = self.valid.to(torch.float64)
        return weight / weight.sum(dim=1, keepdim=True).clamp_min(1.0)


@dataclass
class VariantResult:
    """A variant's output: exactly one of ``per_rollout`` ``[batch]`` or ``per_turn`` ``[batch, turns]``."""

    reward: torch.Tensor
    """``[batch]`` the scalar reward each rollout gets under the variant (0 for unscored rollouts)."""
    per_rollout: torch.Tensor | None = None
    per_turn: torch.Tensor | None = None
    whiten: bool = False
    """Whiten ``per_rollout`` over the batch's scored policy tokens afterwards (GDPO's last step)."""


def _outcome(batch: TurnBatch, reward: torch.Tensor, norm_by_std: bool, epsilon: float) -> VariantResult:
    scored = batch.scored
    reward = torch.where(scored, reward, torch.zeros_like(reward))
    advantage = group_normalize(reward, batch.ids, batch.num_groups, scored, norm_by_std, epsilon)
    return VariantResult(reward=reward, per_rollout=advantage)


def paper(batch: TurnBatch, cfg: Am3AdvantageConfig, norm_by_std: bool, epsilon: float) -> VariantResult:
    """The paper's reward: ``r_i = sum_t alpha_t * (beta * h_it + s_it)`` (eqs. 6-9), then GRPO normalisation.

    Use it by default. It assumes turn t is the same user turn in every rollout of a group (true for
    scripted dialogues), so group statistics per turn index compare like with like.
    """
    turn_reward = cfg.beta * batch.helpful + batch.harmless
    return _outcome(batch, (batch.weights * turn_reward).sum(dim=1), norm_by_std, epsilon)


def uniform(batch: TurnBatch, cfg: Am3AdvantageConfig, norm_by_std: bool, epsilon: float) -> VariantResult:
    """Equal turn weights: ``r_i = mean_t (beta * h_it + s_it)``, then GRPO normalisation.

    Use it as the ablation of the turn weighting (alpha = 1/T), or when groups are too small for the
    per-turn variance to mean much. Assumes nothing about the turns; with full-length dialogues and
    ``beta = 1`` it gives plain ``grpo``'s advantages on the same rows up to the scale of ``r - mean``.
    """
    turn_reward = cfg.beta * batch.helpful + batch.harmless
    return _outcome(batch, (batch.uniform_weights() * turn_reward).sum(dim=1), norm_by_std, epsilon)


def min_mean(batch: TurnBatch, cfg: Am3AdvantageConfig, norm_by_std: bool, epsilon: float) -> VariantResult:
    """Worst-turn safety plus average helpfulness: ``r_i = min_t s_it + beta * mean_t h_it``, then GRPO.

    Use it when one unsafe reply should sink the whole dialogue, as in attack-success metrics: a
    multi-turn jailbreak succeeds on its worst turn. Assumes the harmless scores of different turns are
    on one scale (the judge's rubric is the same for every turn). Does not use alpha.
    """
    harmless = batch.harmless.masked_fill(~batch.valid, float("inf"))
    worst = harmless.min(dim=1).values if harmless.shape[1] else harmless.new_zeros(harmless.shape[0])
    mean_helpful = (batch.uniform_weights() * batch.helpful).sum(dim=1)
    reward = torch.where(batch.scored, worst, torch.zeros_like(worst)) + cfg.beta * mean_helpful
    return _outcome(batch, reward, norm_by_std, epsilon)


def decoupled(batch: TurnBatch, cfg: Am3AdvantageConfig, norm_by_std: bool, epsilon: float) -> VariantResult:
    """GDPO-style: normalise the two objectives separately, then add; ``A = A_s + beta * A_h``, whitened.

    ``R_s = sum_t alpha_t s_it`` and ``R_h = sum_t alpha_t h_it`` (the paper's weights) are each
    group-normalised, summed with weights (1, beta), and the sum is whitened over the batch's scored
    policy tokens, as verl's ``gdpo`` estimator does. Use it when one objective's spread drowns the
    other's (e.g. helpfulness varies a lot, safety barely), so the plain sum would optimise only one.
    Assumes both objectives matter on their own; the overall advantage scale is set by the whitening.
    """
    safety = group_normalize((batch.weights * batch.harmless).sum(dim=1), batch.ids, batch.num_groups, batch.scored, norm_by_std, epsilon)
    helpful = group_normalize((batch.weights * batch.helpful).sum(dim=1), batch.ids, batch.num_groups, batch.scored, norm_by_std, epsilon)
    reward = (batch.weights * (cfg.beta * batch.helpful + batch.harmless)).sum(dim=1)
    return VariantResult(reward=reward, per_rollout=safety + cfg.beta * helpful, whiten=True)


def turn_credit(batch: TurnBatch, cfg: Am3AdvantageConfig, norm_by_std: bool, epsilon: float) -> VariantResult:
    """Per-turn credit: turn t's tokens get ``sum_{k >= t} discount^(k-t) * A_ik`` over judged turns k.

    ``A_ik`` is turn k's reward ``beta * h_ik + s_ik`` normalised within the group's rollouts that have
    turn k judged (GRPO per turn index). A reply is credited with its own outcome and the discounted
    outcomes of the later turns it led to, not with earlier ones. Use it for long dialogues where one
    scalar per dialogue blurs which reply was good. Assumes turn k is the same user turn across the
    group (scripted dialogues); when the policy decides how long a dialogue runs, per-turn-index
    normalisation is biased. The turn weights alpha are not used: each turn is normalised on its own.
    ``reward`` is the uniform mean of the turn rewards (for metrics).
    """
    turns = batch.valid.shape[1]
    turn_reward = cfg.beta * batch.helpful + batch.harmless
    cell_ids = (batch.ids.unsqueeze(1) * turns + torch.arange(turns, device=batch.ids.device)).reshape(-1)
    normalized = group_normalize(
        turn_reward.reshape(-1), cell_ids, batch.num_groups * turns, batch.valid.reshape(-1), norm_by_std, epsilon
    ).reshape(batch.valid.shape)
    credit = torch.zeros_like(normalized)
    later = normalized.new_zeros(normalized.shape[0])
    for t in range(turns - 1, -1, -1):
        later = normalized[:, t] + cfg.discount * later
        credit[:, t] = later
    credit = torch.where(batch.scored.unsqueeze(1), credit, torch.zeros_like(credit))
    reward = (batch.uniform_weights() * turn_reward).sum(dim=1)
    return VariantResult(reward=reward, per_turn=credit)


VARIANT_FUNCTIONS: dict[str, Callable[[TurnBatch, Am3AdvantageConfig, bool, float], VariantResult]] = {
    "paper": paper,
    "uniform": uniform,
    "min_mean": min_mean,
    "decoupled": decoupled,
    "turn_credit": turn_credit,
}


def whiten_rollouts(advantages: torch.Tensor, token_counts: torch.Tensor) -> torch.Tensor:
    """verl's ``masked_whiten`` of per-rollout advantages spread over ``token_counts`` tokens each.

    The same numbers as ``verl.utils.torch_functional.masked_whiten`` on the ``[batch, length]`` token
    tensor (token-weighted mean, unbiased variance, the same 1e-8 terms), computed per rollout so the
    cost does not grow with the response length. Fewer than two tokens in all: all 0.
    """
    weight = token_counts.to(torch.float64)
    total = weight.sum()
    if float(total) < 2:
        return torch.zeros_like(advantages, dtype=torch.float64)
    values = advantages.to(torch.float64)
    mean = (values * weight).sum() / (total + 1e-8)
    var = ((values - mean) ** 2 * weight).sum() / (total + 1e-8) * (total / (total - 1))
    return torch.where(weight > 0, (values - mean) * torch.rsqrt(var + 1e-8), torch.zeros_like(values))
