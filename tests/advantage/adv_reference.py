"""An independent, plainly written reference of the am3_grpo advantage: Python loops over groups and turns.

It reads the token rows itself (no am3_verl code) and follows docs/advantage.md literally, so the tests
can compare the vectorised estimator against it on random batches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class Turn:
    start: int
    end: int  # exclusive
    harmless: float
    helpful: float
    valid: bool


@dataclass
class ReferenceResult:
    advantages: list[list[float]]
    rewards: list[float]
    scored: list[bool]
    alpha: dict = field(default_factory=dict)  # group label -> list of alpha_t (0.0 for absent turns)
    present: dict = field(default_factory=dict)  # group label -> list of bool


def read_turns(rewards_row: list[float], mask_row: list[int]) -> list[Turn]:
    """Turns are maximal runs of mask 1; s on the run's last token, h right after it, -0.0 = judge failed."""
    turns, start = [], None
    for pos, m in enumerate(mask_row + [0]):
        if m and start is None:
            start = pos
        elif not m and start is not None:
            s, h = rewards_row[pos - 1], rewards_row[pos]
            failed = s == 0.0 and math.copysign(1.0, s) < 0
            turns.append(Turn(start, pos, 0.0 if failed else s, 0.0 if failed else h, not failed))
            start = None
    return turns


def normalise(values: dict, norm_by_std: bool, epsilon: float) -> dict:
    """GRPO normalisation of {member: value}; fewer than two members -> all 0."""
    if len(values) < 2:
        return {k: 0.0 for k in values}
    mean = sum(values.values()) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values.values()) / (len(values) - 1))
    return {k: ((v - mean) / (std + epsilon) if norm_by_std else v - mean) for k, v in values.items()}


def reference_am3(
    token_level_rewards: list[list[float]],
    response_mask: list[list[int]],
    index: list,
    *,
    tau: float = 0.5,
    lambda_: float = 1.0,
    beta: float = 1.0,
    temperature: float = 1.0,
    variant: str = "paper",
    discount: float = 1.0,
    norm_by_std: bool = True,
    epsilon: float = 1e-6,
) -> ReferenceResult:
    batch = len(token_level_rewards)
    length = len(response_mask[0]) if batch else 0
    rows = [read_turns(list(token_level_rewards[i]), list(response_mask[i])) for i in range(batch)]
    groups: dict = {}
    for i, label in enumerate(index):
        groups.setdefault(label, []).append(i)

    advantages = [[0.0] * length for _ in range(batch)]
    rewards = [0.0] * batch
    scored = [any(t.valid for t in rows[i]) for i in range(batch)]
    per_rollout_adv = [0.0] * batch
    result = ReferenceResult(advantages, rewards, scored)

    for label, members in groups.items():
        max_turns = max((len(rows[i]) for i in members), default=0)
        uncertainty, present = [], []
        for t in range(max_turns):
            scores = [rows[i][t].harmless for i in members if t < len(rows[i]) and rows[i][t].valid]
            if not scores:
                uncertainty.append(0.0)
                present.append(False)
                continue
            mean = sum(scores) / len(scores)
            var = sum((s - mean) ** 2 for s in scores) / len(scores)
            uncertainty.append(var + lambda_ * max(0.0, tau - mean))
            present.append(True)
        exps = [math.exp(u / temperature) if p else 0.0 for u, p in zip(uncertainty, present)]
        total = sum(exps)
        result.alpha[label] = [e / total if total else 0.0 for e in exps]
        result.present[label] = present

        def weights(i, uncertainty=uncertainty):
            """The group's alpha over rollout i's judged turns, renormalised."""
            ws = {t: math.exp(uncertainty[t] / temperature) for t, turn in enumerate(rows[i]) if turn.valid}
            z = sum(ws.values())
            return {t: w / z for t, w in ws.items()}

        scored_members = [i for i in members if scored[i]]
        if variant == "turn_credit":
            normalised = {}
            for t in range(max_turns):
                cell = {i: beta * rows[i][t].helpful + rows[i][t].harmless for i in scored_members if t < len(rows[i]) and rows[i][t].valid}
                for i, v in normalise(cell, norm_by_std, epsilon).items():
                    normalised[(i, t)] = v
            for i in scored_members:
                valid_turns = [t for t, turn in enumerate(rows[i]) if turn.valid]
                rewards[i] = sum(beta * rows[i][t].helpful + rows[i][t].harmless for t in valid_turns) / len(valid_turns)
                for t, turn in enumerate(rows[i]):
                    credit = sum(discount ** (k - t) * normalised.get((i, k), 0.0) for k in range(t, len(rows[i])))
                    for pos in range(turn.start, turn.end):
                        advantages[i][pos] = credit
            continue

        if variant == "decoupled":
            r_s, r_h = {}, {}
            for i in scored_members:
                w = weights(i)
                r_s[i] = sum(w[t] * rows[i][t].harmless for t in w)
                r_h[i] = sum(w[t] * rows[i][t].helpful for t in w)
                rewards[i] = sum(w[t] * (beta * rows[i][t].helpful + rows[i][t].harmless) for t in w)
            a_s, a_h = normalise(r_s, norm_by_std, epsilon), normalise(r_h, norm_by_std, epsilon)
            for i in scored_members:
                per_rollout_adv[i] = a_s[i] + beta * a_h[i]
            continue

        r = {}
        for i in scored_members:
            valid_turns = [t for t, turn in enumerate(rows[i]) if turn.valid]
            if variant == "paper":
                w = weights(i)
                r[i] = sum(w[t] * (beta * rows[i][t].helpful + rows[i][t].harmless) for t in valid_turns)
            elif variant == "uniform":
                r[i] = sum(beta * rows[i][t].helpful + rows[i][t].harmless for t in valid_turns) / len(valid_turns)
            elif variant == "min_mean":
                r[i] = min(rows[i][t].harmless for t in valid_turns) + beta * sum(rows[i][t].helpful for t in valid_turns) / len(
                    valid_turns
                )
            else:
                raise ValueError(variant)
            rewards[i] = r[i]
        for i, a in normalise(r, norm_by_std, epsilon).items():
            per_rollout_adv[i] = a

    if variant == "decoupled":
        # verl's masked_whiten over every policy token of the scored rollouts, token by token.
        tokens = [(i, pos) for i in range(batch) if scored[i] for pos in range(length) if response_mask[i][pos]]
        if len(tokens) >= 2:
            n = len(tokens)
            mean = sum(per_rollout_adv[i] for i, _ in tokens) / (n + 1e-8)
            var = sum((per_rollout_adv[i] - mean) ** 2 for i, _ in tokens) / (n + 1e-8) * n / (n - 1)
            for i, pos in tokens:
                advantages[i][pos] = (per_rollout_adv[i] - mean) / math.sqrt(var + 1e-8)
    elif variant != "turn_credit":
        for i in range(batch):
            for pos in range(length):
                if response_mask[i][pos]:
                    advantages[i][pos] = per_rollout_adv[i]
    return result
