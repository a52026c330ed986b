"""Prompt groups (verl's ``uid``) as dense indices, and GRPO's group normalisation over them."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def group_ids(index: Any, batch_size: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, int]:
    """Map verl's per-row group labels (``uid``) to dense ids ``0..G-1``; returns ``(ids [batch], G)``.

    Rows with equal labels share an id; ids follow the sorted order of the labels, so they do not depend
    on the order of the rows. Raises ``ValueError`` when ``index`` is missing or has the wrong length.
    """
    if index is None:
        raise ValueError("am3_grpo needs the prompt-group index (verl passes data.non_tensor_batch['uid'])")
    labels = np.asarray(index, dtype=object).reshape(-1)
    if labels.shape[0] != batch_size:
        raise ValueError(f"am3_grpo: the group index has {labels.shape[0]} entries for a batch of {batch_size} rows")
    if batch_size == 0:
        return torch.zeros(0, dtype=torch.long, device=device), 0
    _, inverse = np.unique(labels, return_inverse=True)
    ids = torch.as_tensor(inverse.reshape(-1), dtype=torch.long, device=device)
    return ids, int(ids.max().item()) + 1


def group_normalize(
    values: torch.Tensor,
    ids: torch.Tensor,
    num_groups: int,
    include: torch.Tensor,
    norm_by_std: bool,
    epsilon: float,
) -> torch.Tensor:
    """GRPO's normalisation of ``values`` ``[N]`` within groups ``ids``, over the members where ``include``.

    Each included member gets ``(v - mean) / (std + epsilon)`` (``v - mean`` when ``norm_by_std`` is
    False), where mean and the unbiased std (``torch.std``, as verl's ``grpo``) are taken over the
    group's included members. Members that are not included, and groups with fewer than two included
    members, get 0: without a second sample there is no baseline to compare against.
    """
    values = values.to(torch.float64)
    weight = include.to(torch.float64)
    count = torch.zeros(num_groups, dtype=torch.float64, device=values.device).index_add_(0, ids, weight)
    total = torch.zeros_like(count).index_add_(0, ids, values * weight)
    mean = total / count.clamp_min(1.0)
    centered = (values - mean[ids]) * weight
    sq = torch.zeros_like(count).index_add_(0, ids, centered * centered)
    std = torch.sqrt(sq / (count - 1.0).clamp_min(1.0))
    scaled = centered / (std[ids] + epsilon) if norm_by_std else centered
    return torch.where(include & (count[ids] >= 2), scaled, torch.zeros_like(scaled))
