"""Generate the miniature task's data, deterministically from a seed, in the formats data prep reads.

For one seed, :func:`generate_task` writes into a folder:

* ``dialogues_train.jsonl`` / ``dialogues_heldout.jsonl`` – InterSafe-V dialogues (2-4 turns,
  :data:`TEMPLATES`) for the GRPO stage and the held-out evaluation. Three of the six hazardous pairs
  are trained on (always covering all four hazardous substances); the other three, and a share of
  the benign pairs, appear only in the held-out file: it holds combinations never seen in training;
* ``refusal_vqa.jsonl`` – the cold-start refusal samples: one picture showing a *trained* hazardous
  pair and the single-turn mixing request, answered with an explained refusal;
* ``general.jsonl`` – the cold-start general VQA: colour and shop questions about every substance and
  the single-turn mixing request about trained benign pairs, answered;
* ``images/`` – one picture per substance and per pair; ``task.json`` – the split and the counts.

Harmful and benign dialogues are balanced in both files; which benign ones are drawn, the split of
pairs and the order of records follow the seed. Files are staged and renamed when complete.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

from am3_verl.atomic import write_text_atomic
from am3_verl.miniature.world import (
    Q_BUY,
    Q_COLOUR,
    Q_COLOUR_NEXT,
    Q_MIX,
    Q_MIX_PAIR,
    Q_MIX_WITH_THIS,
    REPLY_BUY,
    REPLY_MIX,
    REPLY_REFUSE,
    SUBSTANCES,
    Substance,
    all_pairs,
    harmful_pair,
    render,
    reply_colour,
)

HARM_CATEGORY = "dangerous_mixtures"
BENIGN_CATEGORY = "benign"
TRAINED_HAZARDOUS_PAIRS = 3
HELDOUT_BENIGN_PAIRS = 5
REFUSAL_COPIES = 4
COLOUR_COPIES = 3
"""Each trained hazardous pair picture appears this many times (both orders) in the refusal samples."""

TEMPLATES: dict[str, list[tuple[str, int | None]]] = {
    # (question, index of the pair member pictured in this turn, or None)
    "two_turns": [(Q_COLOUR, 0), (Q_MIX_WITH_THIS, 1)],
    "three_turns": [(Q_COLOUR, 0), (Q_COLOUR_NEXT, 1), (Q_MIX, None)],
    "four_turns": [(Q_COLOUR, 0), (Q_BUY, None), (Q_COLOUR_NEXT, 1), (Q_MIX, None)],
}
"""The dialogue shapes: the mixing request always comes last and never names the substances."""


@dataclass(frozen=True)
class TaskSplit:
    """Which pairs of substances are trained on and which are held out."""

    trained_harmful: tuple[tuple[str, str], ...]
    heldout_harmful: tuple[tuple[str, str], ...]
    trained_benign: tuple[tuple[str, str], ...]
    heldout_benign: tuple[tuple[str, str], ...]


def split_pairs(rng: random.Random) -> TaskSplit:
    """Draw the trained hazardous pairs (covering every hazardous substance) and the held-out benign pairs."""
    hazardous = [p for p in all_pairs() if harmful_pair(*p)]
    benign = [p for p in all_pairs() if not harmful_pair(*p)]
    names = {s.name for s in SUBSTANCES if s.hazardous}
    covers = [c for c in combinations(hazardous, TRAINED_HAZARDOUS_PAIRS) if {s.name for p in c for s in p} == names]
    trained = rng.choice(covers)
    heldout_benign = rng.sample(benign, HELDOUT_BENIGN_PAIRS)

    def names_of(pairs) -> tuple[tuple[str, str], ...]:
        return tuple((a.name, b.name) for a, b in pairs)

    return TaskSplit(
        trained_harmful=names_of(trained),
        heldout_harmful=names_of(p for p in hazardous if p not in trained),
        trained_benign=names_of(p for p in benign if p not in heldout_benign),
        heldout_benign=names_of(heldout_benign),
    )


def _image_name(*substances: Substance) -> str:
    return "images/" + "-".join(s.name for s in substances) + ".png"


def _dialogue(record_id: str, template: str, a: Substance, b: Substance) -> dict:
    pair = (a, b)
    turns = []
    for question, pictured in TEMPLATES[template]:
        images = [] if pictured is None else [_image_name(pair[pictured])]
        if question in (Q_MIX, Q_MIX_WITH_THIS):
            answer = REPLY_REFUSE if harmful_pair(a, b) else REPLY_MIX
        elif question == Q_BUY:
            answer = REPLY_BUY
        else:
            answer = reply_colour(pair[pictured])
        turns.append({"user": ("<image>\n" if images else "") + question, "images": images, "assistant": answer})
    return {
        "id": record_id,
        "category": HARM_CATEGORY if harmful_pair(a, b) else BENIGN_CATEGORY,
        "source": "am3_miniature",
        "turns": turns,
        "meta": {"pair": [a.name, b.name], "template": template},
    }


def _dialogues(prefix: str, harmful: list, benign: list, rng: random.Random) -> list[dict]:
    """Every ordering and template of the harmful pairs, and as many benign dialogues drawn from ``benign``."""
    harmful_rows = [(t, a, b) for x, y in harmful for a, b in ((x, y), (y, x)) for t in TEMPLATES]
    benign_all = [(t, a, b) for x, y in benign for a, b in ((x, y), (y, x)) for t in TEMPLATES]
    benign_rows = rng.sample(benign_all, min(len(harmful_rows), len(benign_all)))
    rows = harmful_rows + benign_rows
    rng.shuffle(rows)
    return [_dialogue(f"{prefix}-{i:04d}", t, a, b) for i, (t, a, b) in enumerate(rows)]


def _as_substances(pairs: tuple[tuple[str, str], ...]) -> list[tuple[Substance, Substance]]:
    by_name = {s.name: s for s in SUBSTANCES}
    return [(by_name[a], by_name[b]) for a, b in pairs]


def _write_jsonl(path: Path, records: list[dict]) -> None:
    write_text_atomic(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))


def generate_task(output_dir: Path, seed: int) -> dict:
    """Write the task for ``seed`` into ``output_dir`` (see the module docstring); return ``task.json``'s content."""
    rng = random.Random(seed)
    split = split_pairs(rng)
    output_dir = Path(output_dir)
    (output_dir / "images").mkdir(parents=True, exist_ok=True)
    for substance in SUBSTANCES:
        (output_dir / _image_name(substance)).write_bytes(render(substance))
    for a, b in all_pairs():
        for x, y in ((a, b), (b, a)):
            (output_dir / _image_name(x, y)).write_bytes(render(x, y))

    train = _dialogues("mini-train", _as_substances(split.trained_harmful), _as_substances(split.trained_benign), rng)
    heldout = _dialogues("mini-heldout", _as_substances(split.heldout_harmful), _as_substances(split.heldout_benign), rng)

    refusal = [
        {"id": f"mini-refusal-{i:04d}", "image": _image_name(x, y), "question": Q_MIX_PAIR, "answer": REPLY_REFUSE,
         "domain": "general"}
        for i, (x, y) in enumerate(
            (x, y) for _ in range(REFUSAL_COPIES) for a, b in _as_substances(split.trained_harmful) for x, y in ((a, b), (b, a))
        )
    ]  # fmt: skip
    general = []
    for s in SUBSTANCES:
        # Colours are the one thing read from the pictures: asked more often than the rest.
        for _ in range(COLOUR_COPIES):
            general.append((_image_name(s), Q_COLOUR, reply_colour(s)))
            general.append((_image_name(s), Q_COLOUR_NEXT, reply_colour(s)))
        general.append((_image_name(s), Q_BUY, REPLY_BUY))
    for a, b in _as_substances(split.trained_benign):
        general.append((_image_name(a, b), Q_MIX_PAIR, REPLY_MIX))
        general.append((_image_name(b, a), Q_MIX_PAIR, REPLY_MIX))
    rng.shuffle(general)
    general_rows = [
        {"id": f"mini-general-{i:04d}", "image": image, "question": q, "answer": answer, "domain": "general"}
        for i, (image, q, answer) in enumerate(general)
    ]
    _write_jsonl(output_dir / "dialogues_train.jsonl", train)
    _write_jsonl(output_dir / "dialogues_heldout.jsonl", heldout)
    _write_jsonl(output_dir / "refusal_vqa.jsonl", refusal)
    _write_jsonl(output_dir / "general.jsonl", general_rows)
    task = {
        "seed": seed,
        "split": {k: [list(p) for p in v] for k, v in vars(split).items()},
        "counts": {
            "dialogues_train": len(train),
            "dialogues_heldout": len(heldout),
            "refusal_vqa": len(refusal),
            "general": len(general_rows),
        },
    }
    write_text_atomic(output_dir / "task.json", json.dumps(task, indent=2) + "\n")
    return task
