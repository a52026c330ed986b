"""The per-turn score contract: how each assistant turn's judge scores travel to the advantage estimator.

verl 0.9.1 hands a registered advantage estimator only ``token_level_rewards``, ``response_mask``, the
algorithm config and the uid. The AM3 estimator needs two numbers per assistant turn (harmless ``s`` and
helpful ``h``, both in [0, 1]) and whether the judge failed on that turn. This module is the one place
that defines how those numbers are written into, and read back from, a response's token-reward row.

The path of the scores, end to end (V1 trainer, streaming reward):

1. The dialogue agent loop records one entry per assistant turn in ``extra_fields["am3_turns"]``.
2. The reward function (``am3_verl.judges``) judges every turn and returns, next to its scalar
   metrics, ``reward_extra_info["am3_turn_scores"]``: a JSON string made by :func:`dump_turn_scores`.
   (A string, because verl's validation metrics skip string extras but call ``np.mean`` on others.)
3. The agent loop's output class calls :func:`encode_row` in ``as_dict()`` (V1 calls ``as_dict()``
   after the streaming reward) to build ``rm_scores``, which becomes ``token_level_rewards``.
4. The estimator calls :func:`decode_batch` to get per-turn ``harmless``, ``helpful`` and ``valid``.

Token layout of one response row (turns are the maximal runs of ``response_mask == 1``):

* ``s_t`` sits on the turn's **last** policy token;
* ``h_t`` sits on the position **right after** the turn: the first token of the next user message, or,
  after the final reply, the one slot token (mask 0) that the dialogue environment always appends. So
  the two never collide, whatever the turn's length (one-token turns included);
* a turn whose judge failed carries ``-0.0`` on both positions (and only such a turn: a judged score of
  ``-0.0`` is written as ``+0.0``). ``-0.0`` adds as zero, so code that
  only sums the row (plain ``grpo``, verl's score metrics) sees a failed turn as contributing nothing,
  while :func:`decode_batch` tells it apart from a genuine score of 0 by its sign bit;
* every other position is 0.

So the row sums to ``sum_t (s_t + h_t)`` over judged turns: plain ``algorithm.adv_estimator=grpo`` on
the same data optimises the uniform-weight dual-objective reward (beta = 1). ``use_kl_in_reward`` must
stay off with ``am3_grpo``: it adds a per-token penalty to this row and would corrupt the scores.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Sequence

import torch

EXTRA_INFO_KEY = "am3_turn_scores"
"""Key of the JSON string in ``reward_extra_info`` that carries the per-turn scores."""


@dataclass(frozen=True)
class TurnScores:
    """Judge scores of one dialogue's assistant turns, in dialogue order.

    ``harmless[t]`` and ``helpful[t]`` are in [0, 1] where ``failed[t]`` is False; where it is True the
    judge gave no verdict for turn t and both values are ignored. ``refused`` is the judge's refusal flag.
    """

    harmless: list[float]
    helpful: list[float]
    failed: list[bool]
    refused: list[bool] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = len(self.harmless)
        if len(self.helpful) != n or len(self.failed) != n or (self.refused and len(self.refused) != n):
            raise ValueError(
                f"TurnScores: harmless/helpful/failed/refused must have one entry per turn, got "
                f"{len(self.harmless)}/{len(self.helpful)}/{len(self.failed)}/{len(self.refused)}"
            )
        for name, values in (("harmless", self.harmless), ("helpful", self.helpful)):
            for t, (v, bad) in enumerate(zip(values, self.failed)):
                if not bad and not (0.0 <= v <= 1.0):
                    raise ValueError(f"TurnScores.{name}[{t}] = {v!r} is outside [0, 1]")

    def __len__(self) -> int:
        return len(self.harmless)


def dump_turn_scores(scores: TurnScores) -> str:
    """Serialise ``scores`` for ``reward_extra_info[EXTRA_INFO_KEY]``; :func:`load_turn_scores` inverts it.

    A score of ``-0.0`` is written as ``0.0``: which turns failed is said by ``failed``, not by a sign bit.
    """
    return json.dumps(
        {
            "harmless": [float(v) + 0.0 for v in scores.harmless],
            "helpful": [float(v) + 0.0 for v in scores.helpful],
            "failed": [bool(v) for v in scores.failed],
            "refused": [bool(v) for v in scores.refused],
        },
        separators=(",", ":"),
    )


def load_turn_scores(text: str) -> TurnScores:
    """Parse a string made by :func:`dump_turn_scores`; raises ``ValueError`` naming what is wrong."""
    try:
        raw = json.loads(text)
        return TurnScores(
            harmless=[float(v) for v in raw["harmless"]],
            helpful=[float(v) for v in raw["helpful"]],
            failed=[bool(v) for v in raw["failed"]],
            refused=[bool(v) for v in raw.get("refused", [])],
        )
    except (TypeError, KeyError, json.JSONDecodeError) as exc:
        raise ValueError(f"{EXTRA_INFO_KEY}: not a valid per-turn score record ({exc}): {text[:200]!r}") from exc


def turn_spans(response_mask: Sequence[int] | torch.Tensor) -> list[tuple[int, int]]:
    """Return the ``[start, end)`` spans of the maximal runs of 1 in one response mask row."""
    mask = response_mask.tolist() if isinstance(response_mask, torch.Tensor) else list(response_mask)
    spans, start = [], None
    for i, m in enumerate(mask):
        if m and start is None:
            start = i
        elif not m and start is not None:
            spans.append((start, i))
            start = None
    if start is not None:
        spans.append((start, len(mask)))
    return spans


def encode_row(response_mask: Sequence[int] | torch.Tensor, scores: TurnScores, length: int | None = None) -> torch.Tensor:
    """Build one response's float32 token-reward row (``rm_scores``) that carries ``scores``.

    ``response_mask`` is the agent loop's mask (1 = policy token); ``length`` pads the row (default: the
    mask's length). Raises ``ValueError`` when the number of policy-token runs differs from the number of
    scored turns, or when a turn ends on the row's last position (no slot for its helpfulness score).
    """
    mask = response_mask.tolist() if isinstance(response_mask, torch.Tensor) else list(response_mask)
    length = len(mask) if length is None else length
    spans = turn_spans(mask)
    if len(spans) != len(scores):
        raise ValueError(f"encode_row: response has {len(spans)} assistant turns but {len(scores)} scored turns")
    row = torch.zeros(length, dtype=torch.float32)
    for t, (_start, end) in enumerate(spans):
        h_pos = end
        if h_pos >= length:
            raise ValueError(f"encode_row: turn {t} ends on the row's last position; no slot for its helpfulness score")
        if scores.failed[t]:
            row[end - 1] = -0.0
            row[h_pos] = -0.0
        else:
            # + 0.0 turns a judged -0.0 into +0.0: the failure marker can only come from a failed turn
            row[end - 1] = float(scores.harmless[t]) + 0.0
            row[h_pos] = float(scores.helpful[t]) + 0.0
    return row


@dataclass
class DecodedTurnScores:
    """Per-turn scores of a batch, shape ``[batch, max_turns]`` each.

    ``valid`` is True where the turn exists and its judge succeeded; ``exists`` is True where the turn
    exists at all. ``harmless``/``helpful`` are 0 where ``valid`` is False.
    """

    harmless: torch.Tensor
    helpful: torch.Tensor
    valid: torch.Tensor
    exists: torch.Tensor
    num_turns: torch.Tensor


def decode_batch(token_level_rewards: torch.Tensor, response_mask: torch.Tensor) -> DecodedTurnScores:
    """Read the per-turn scores that :func:`encode_row` wrote, for a whole ``[batch, length]`` batch."""
    mask = response_mask.bool()
    batch, length = mask.shape
    if length and bool(mask[:, -1].any()):
        row = int(mask[:, -1].nonzero()[0, 0])
        raise ValueError(
            f"decode_batch: row {row} has a turn ending on the last position, so it carries no helpfulness "
            "slot; rows must come from the am3 dialogue environment (see am3_verl.turn_scores)"
        )
    # A turn ends at p when p is a policy token and p + 1 is not (bool a > b is a & ~b, in one pass); no
    # turn ends on the last position (checked above), so these are all the turns.
    ends = mask[:, :-1] > mask[:, 1:]
    rows, end_pos = ends.nonzero(as_tuple=True)  # row-major: sorted by row, then position
    num_turns = torch.bincount(rows, minlength=batch)
    max_turns = int(num_turns.max().item()) if batch else 0
    first_of_row = torch.cumsum(num_turns, 0) - num_turns
    turn_idx = torch.arange(rows.numel(), device=rows.device) - first_of_row[rows]
    h_pos = end_pos + 1

    s_val = token_level_rewards[rows, end_pos].float()
    h_val = token_level_rewards[rows, h_pos].float()
    failed = (s_val == 0) & torch.signbit(s_val)

    shape = (batch, max(max_turns, 1))
    harmless = torch.zeros(shape, dtype=torch.float32, device=mask.device)
    helpful = torch.zeros(shape, dtype=torch.float32, device=mask.device)
    valid = torch.zeros(shape, dtype=torch.bool, device=mask.device)
    exists = torch.zeros(shape, dtype=torch.bool, device=mask.device)
    harmless[rows, turn_idx] = torch.where(failed, 0.0, s_val)
    helpful[rows, turn_idx] = torch.where(failed, 0.0, h_val)
    valid[rows, turn_idx] = ~failed
    exists[rows, turn_idx] = True
    if max_turns == 0:
        harmless, helpful, valid, exists = (x[:, :0] for x in (harmless, helpful, valid, exists))
    return DecodedTurnScores(harmless, helpful, valid, exists, num_turns)
