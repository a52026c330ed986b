"""Per-step dumps of every rollout's per-turn judge scores, for analysis after a run.

With verl's ``trainer.rollout_data_dir`` set (verl then dumps each step's decoded rollouts there), the
``am3_*`` trainer modes also write ``<rollout_data_dir>/am3_turn_scores/<step>.jsonl``: one line per
rollout of the step with its prompt group (``uid``) and, per assistant turn, the harmless and helpful
scores the estimator read and whether the judge failed. :mod:`am3_verl.miniature.turn_count_bias` reads
them back; so can any notebook (``read_turn_score_dumps``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from am3_verl.atomic import write_text_atomic
from am3_verl.turn_scores import DecodedTurnScores

DUMP_SUBDIR = "am3_turn_scores"
"""Folder under ``trainer.rollout_data_dir`` that holds the dumps."""


@dataclass(frozen=True)
class RolloutTurnScores:
    """One rollout of one step: its group and its per-turn scores (failed turns: scores 0, ``failed`` True)."""

    step: int
    uid: str
    harmless: tuple[float, ...]
    helpful: tuple[float, ...]
    failed: tuple[bool, ...]


def write_step_turn_scores(
    rollout_data_dir: str | Path, step: int, decoded: DecodedTurnScores, uid: Sequence[Any], rows: torch.Tensor
) -> Path:
    """Write the rows selected by ``rows`` (bool ``[batch]``) of ``decoded`` as ``<dir>/am3_turn_scores/<step>.jsonl``.

    The file appears complete or not at all (written under a temporary name, then renamed); a rerun of
    the same step replaces it. Returns its path.
    """
    lines = []
    for row in rows.nonzero().flatten().tolist():
        turns = int(decoded.num_turns[row])
        record = {
            "step": int(step),
            "uid": str(uid[row]),
            "harmless": [round(float(v), 6) for v in decoded.harmless[row, :turns]],
            "helpful": [round(float(v), 6) for v in decoded.helpful[row, :turns]],
            "failed": [not bool(v) for v in decoded.valid[row, :turns]],
        }
        lines.append(json.dumps(record))
    path = Path(rollout_data_dir) / DUMP_SUBDIR / f"{int(step)}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, "".join(line + "\n" for line in lines))
    return path


def read_turn_score_dumps(rollout_data_dir: str | Path) -> list[RolloutTurnScores]:
    """Every rollout dumped under ``rollout_data_dir``, ordered by step then file order.

    Raises ``FileNotFoundError`` when there is no dump, and ``ValueError`` naming the file and line of
    a malformed record.
    """
    folder = Path(rollout_data_dir) / DUMP_SUBDIR
    files = sorted(folder.glob("*.jsonl"), key=lambda p: int(p.stem)) if folder.is_dir() else []
    if not files:
        raise FileNotFoundError(f"no per-turn score dumps in {folder} (was trainer.rollout_data_dir set?)")
    rollouts = []
    for path in files:
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            try:
                record = json.loads(line)
                rollout = RolloutTurnScores(
                    step=int(record["step"]),
                    uid=str(record["uid"]),
                    harmless=tuple(float(v) for v in record["harmless"]),
                    helpful=tuple(float(v) for v in record["helpful"]),
                    failed=tuple(bool(v) for v in record["failed"]),
                )
            except (KeyError, TypeError, ValueError) as error:
                raise ValueError(f"{path}:{number}: malformed per-turn score record ({error})") from error
            if not len(rollout.harmless) == len(rollout.helpful) == len(rollout.failed):
                raise ValueError(f"{path}:{number}: harmless, helpful and failed differ in length")
            rollouts.append(rollout)
    return rollouts
