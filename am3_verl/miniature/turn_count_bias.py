"""How much mixed-length groups move each estimator's advantages, measured on a run's real rollouts.

When the rollouts of one prompt group reach different numbers of turns (a dialogue cut by the token
budget, or ended early), the AM3 estimator computes turn t's group statistics (eqs. 6-8) over the
rollouts that reached turn t and renormalises each rollout's turn weights over its own turns
(docs/method.md, "Groups whose rollouts have different numbers of turns"). This module measures what
that rule does to the learning signal.

It takes the per-turn scores of every rollout of a GRPO run (dumped by the ``am3_*`` trainer modes
under ``trainer.rollout_data_dir``, :mod:`am3_verl.advantage.turn_score_dump`), keeps the groups whose
rollouts all have the same number of turns (in the miniature's replayed dialogues, all of them), and
computes every rollout's advantage twice with the same estimator:

* **same-length**: the groups as they were sampled;
* **mixed-length**: the same groups after cutting, with probability ``cut_probability`` per rollout, a
  rollout of T >= 2 turns after a uniformly drawn turn in 1..T-1, as a token budget would.

It reports, per estimator, the change of the advantage of the rollouts that were *not* cut (a pure
effect of the rule: their own scores did not change, only their group's statistics) and of the rollouts
that were cut (their own content changed too; the signed mean says whether being cut short is rewarded
or penalised). The estimators are the AM3 variants through :func:`am3_verl.advantage.estimator.compute_am3`
and verl's own ``grpo`` (``compute_grpo_outcome_advantage``) on the same rows, which sums the turn
rewards and so penalises a short rollout for its length.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch

from am3_verl.advantage.config import Am3AdvantageConfig
from am3_verl.advantage.estimator import compute_am3
from am3_verl.advantage.turn_score_dump import RolloutTurnScores
from am3_verl.turn_scores import TurnScores, encode_row

ESTIMATOR_RULES: dict[str, str | None] = {"am3_grpo": "paper", "min_mean": "min_mean", "grpo": None}
"""Estimator -> the AM3 variant it computes (None: verl's own ``grpo`` on the summed turn rewards)."""


@dataclass(frozen=True)
class Group:
    """The rollouts of one prompt group of one step (same number of turns each)."""

    key: str
    rollouts: tuple[RolloutTurnScores, ...]


def same_length_groups(rollouts: list[RolloutTurnScores]) -> tuple[list[Group], dict[str, int]]:
    """Group the rollouts by (step, uid); keep the groups that can be cut into a mixed-length group.

    Returns the kept groups and the counts of every group seen: ``kept``, ``already_mixed`` (rollouts of
    different lengths as sampled), ``single_rollout`` and ``single_turn``; they add up to ``groups``.
    """
    by_key: dict[str, list[RolloutTurnScores]] = defaultdict(list)
    for rollout in rollouts:
        by_key[f"{rollout.step}:{rollout.uid}"].append(rollout)
    kept, counts = [], {"groups": len(by_key), "kept": 0, "already_mixed": 0, "single_rollout": 0, "single_turn": 0}
    for key, members in by_key.items():
        lengths = {len(r.harmless) for r in members}
        if len(members) < 2:
            counts["single_rollout"] += 1
        elif len(lengths) > 1:
            counts["already_mixed"] += 1
        elif lengths == {1}:
            counts["single_turn"] += 1
        else:
            counts["kept"] += 1
            kept.append(Group(key, tuple(members)))
    return kept, counts


def cut_lengths(groups: list[Group], cut_probability: float, seed: int) -> list[list[int]]:
    """Per group, per rollout: the number of turns it keeps (a cut rollout keeps 1..T-1, drawn uniformly)."""
    if not 0.0 < cut_probability < 1.0:
        raise ValueError(f"cut_probability must be in (0, 1), got {cut_probability}")
    rng = random.Random(seed)
    lengths = []
    for group in groups:
        row = []
        for rollout in group.rollouts:
            turns = len(rollout.harmless)
            row.append(rng.randint(1, turns - 1) if rng.random() < cut_probability else turns)
        lengths.append(row)
    return lengths


def _rows(groups: list[Group], lengths: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Token rows in the estimator's layout: per turn one policy token, then one slot for its helpfulness."""
    width = 2 * max(max(row) for row in lengths)
    rewards, masks, index = [], [], []
    for group, row in zip(groups, lengths):
        for rollout, keep in zip(group.rollouts, row):
            mask = [1, 0] * keep + [0] * (width - 2 * keep)
            scores = TurnScores(
                harmless=list(rollout.harmless[:keep]), helpful=list(rollout.helpful[:keep]), failed=list(rollout.failed[:keep])
            )
            rewards.append(encode_row(mask, scores))
            masks.append(torch.tensor(mask, dtype=torch.int64))
            index.append(group.key)
    return torch.stack(rewards), torch.stack(masks), index


def rollout_advantages(estimator: str, rewards: torch.Tensor, mask: torch.Tensor, index: list[str]) -> np.ndarray:
    """One advantage per row under ``estimator`` (a key of :data:`ESTIMATOR_RULES`), with the recipe's settings."""
    variant = ESTIMATOR_RULES[estimator]
    if variant is None:
        from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage

        advantages, _ = compute_grpo_outcome_advantage(rewards, mask, np.array(index, dtype=object))
        first_token = mask.argmax(dim=1)
        return advantages[torch.arange(len(index)), first_token].double().numpy()
    computation = compute_am3(rewards, mask, index, Am3AdvantageConfig(variant=variant))
    return computation.result.per_rollout.double().cpu().numpy()


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation; NaN when either side is constant (or has fewer than three values)."""
    if len(a) < 3 or np.std(a) == 0 or np.std(b) == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def measure(rollouts: list[RolloutTurnScores], *, cut_probability: float = 0.5, seed: int = 0) -> dict:
    """The same-length vs mixed-length comparison of the module docstring, for every estimator.

    Per estimator: ``mean_abs_advantage`` (same-length; the scale), ``kept_mean_abs_change`` and
    ``kept_sign_flip_rate`` over rollouts not cut (flips counted where both advantages are non-zero),
    ``cut_mean_change`` (signed) and ``cut_mean_abs_change`` over cut rollouts, and ``correlation``
    (Pearson, all rollouts of the mixed groups). Plus ``groups`` (counts of :func:`same_length_groups`),
    ``mixed_length_fraction`` (kept groups that the cut made mixed), ``rollouts``, ``cut_rollouts``.
    Raises ``ValueError`` when no group can be cut.
    """
    groups, counts = same_length_groups(rollouts)
    if not groups:
        raise ValueError(f"no group of two or more rollouts with two or more turns to cut ({counts})")
    full = [[len(r.harmless) for r in g.rollouts] for g in groups]
    cut = cut_lengths(groups, cut_probability, seed)
    mixed_groups = [len(set(row)) > 1 for row in cut]
    in_mixed = np.array([m for m, row in zip(mixed_groups, cut) for _ in row])
    was_cut = np.array([c < f for crow, frow in zip(cut, full) for c, f in zip(crow, frow)])
    kept = in_mixed & ~was_cut
    rows_full, rows_cut = _rows(groups, full), _rows(groups, cut)
    result: dict = {
        "groups": counts,
        "cut_probability": cut_probability,
        "seed": seed,
        "rollouts": int(len(was_cut)),
        "cut_rollouts": int(was_cut.sum()),
        "mixed_length_fraction": float(np.mean(mixed_groups)),
        "estimators": {},
    }
    for estimator in ESTIMATOR_RULES:
        before = rollout_advantages(estimator, *rows_full)
        after = rollout_advantages(estimator, *rows_cut)
        change = after - before
        both = kept & (before != 0) & (after != 0)
        result["estimators"][estimator] = {
            "mean_abs_advantage": float(np.abs(before).mean()),
            "kept_mean_abs_change": float(np.abs(change[kept]).mean()) if kept.any() else float("nan"),
            "kept_sign_flip_rate": float((np.sign(before[both]) != np.sign(after[both])).mean()) if both.any() else float("nan"),
            "cut_mean_change": float(change[was_cut].mean()) if was_cut.any() else float("nan"),
            "cut_mean_abs_change": float(np.abs(change[was_cut]).mean()) if was_cut.any() else float("nan"),
            "correlation": _pearson(before[in_mixed], after[in_mixed]),
        }
    return result
