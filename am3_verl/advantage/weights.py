"""Turn weights from a prompt group's safety statistics (docs/method.md eqs. 6-8).

For prompt group g and assistant turn t, over the group's rollouts whose turn t was judged:

    mean_gt = mean of the harmless scores s(i, t)
    var_gt  = (1/n) * sum (s(i, t) - mean_gt)^2                     # eq. 6, population variance
    U_gt    = var_gt + lambda * max(0, tau - mean_gt)                # eq. 7
    alpha_g = softmax over the group's turns of U_gt / temperature   # eq. 8

A turn is *present* in a group when at least one rollout has it judged. Turns that are absent (every
rollout was truncated before it, or its judge failed everywhere) get no weight. Rollout i uses the
group's weights renormalised over its own judged turns, which equals a softmax of ``U / temperature``
over those turns: a truncated dialogue or a failed judge call neither adds nor removes reward, it only
drops that turn from the average.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class TurnStatistics:
    """Per (group, turn) statistics, shape ``[groups, turns]`` each; float64."""

    count: torch.Tensor
    """Number of the group's rollouts whose turn t was judged."""
    mean: torch.Tensor
    """Group mean of the harmless score (0 where ``count`` is 0)."""
    var: torch.Tensor
    """Group population variance of the harmless score (eq. 6; 0 where ``count`` is 0)."""
    uncertainty: torch.Tensor
    """``U`` of eq. 7 (0 where ``count`` is 0)."""
    alpha: torch.Tensor
    """eq. 8 over the group's present turns: each row sums to 1 (0 for absent turns; all 0 if none)."""

    @property
    def present(self) -> torch.Tensor:
        """``[groups, turns]`` bool: the turn was judged in at least one of the group's rollouts."""
        return self.count > 0


def turn_statistics(
    harmless: torch.Tensor,
    valid: torch.Tensor,
    ids: torch.Tensor,
    num_groups: int,
    tau: float,
    lambda_: float,
    temperature: float,
) -> TurnStatistics:
    """Compute eqs. 6-8 for every group; ``harmless``/``valid`` are ``[batch, turns]``, ``ids`` ``[batch]``."""
    turns = harmless.shape[1]
    weight = valid.to(torch.float64)
    scores = harmless.to(torch.float64) * weight
    zeros = torch.zeros(num_groups, turns, dtype=torch.float64, device=harmless.device)
    count = zeros.clone().index_add_(0, ids, weight)
    mean = zeros.clone().index_add_(0, ids, scores) / count.clamp_min(1.0)
    deviation = (scores - mean[ids]) * weight
    var = zeros.clone().index_add_(0, ids, deviation * deviation) / count.clamp_min(1.0)
    present = count > 0
    uncertainty = torch.where(present, var + lambda_ * torch.clamp(tau - mean, min=0.0), zeros)
    alpha = masked_softmax(uncertainty / temperature, present)
    return TurnStatistics(count=count, mean=mean, var=var, uncertainty=uncertainty, alpha=alpha)


def masked_softmax(logits: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dimension restricted to ``keep``; rows with nothing kept are all 0."""
    if logits.shape[-1] == 0:
        return torch.zeros_like(logits)
    masked = logits.masked_fill(~keep, float("-inf"))
    top = masked.max(dim=-1, keepdim=True).values
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    exp = torch.exp(masked - top)
    total = exp.sum(dim=-1, keepdim=True)
    return torch.where(total > 0, exp / total.clamp_min(torch.finfo(exp.dtype).tiny), torch.zeros_like(exp))


def rollout_turn_weights(stats: TurnStatistics, ids: torch.Tensor, valid: torch.Tensor, temperature: float) -> torch.Tensor:
    """``[batch, turns]`` weights of each rollout's judged turns: the group's alpha renormalised over them.

    Computed as a softmax of ``U / temperature`` over the rollout's judged turns (the same numbers,
    without underflow). Rows of rollouts with no judged turn are all 0; other rows sum to 1.
    """
    return masked_softmax(stats.uncertainty[ids] / temperature, valid)
