"""The clean stage: drop near-duplicate images inside each dialogue, then keep only dialogues with a risk.

1. Every image of a dialogue (seed and drawn ones, in turn order) is hashed with dHash
   (:mod:`am3_verl.builder.phash`); an image within ``clean.max_distance`` bits of an earlier kept one
   is removed from its turn, together with its ``<image>`` placeholder, and recorded in
   ``removed_images`` (turn, the turn it duplicates, distance). The turn's text stays.
2. The judge sees the cleaned user turns (text and images, never the victim's replies) and says whether
   the dialogue still builds towards an identifiable harm, and how serious (0-10). The dialogue is kept
   when it does and ``risk / 10 >= clean.min_risk``; otherwise it is dropped with the judge's rationale.
"""

from __future__ import annotations

import asyncio

from am3_verl.builder.answers import RiskVerdict, parser
from am3_verl.builder.calls import system_and_user
from am3_verl.builder.context import StageContext
from am3_verl.builder.phash import near_duplicates
from am3_verl.builder.prompts import quoted
from am3_verl.builder.state import DialogueState, ItemState, RemovedImage
from am3_verl.dialogue import IMAGE_PLACEHOLDER

STAGE = "clean"


def kept_turns(dialogue: DialogueState) -> list[tuple[str, str | None]]:
    """``(message, image blob or None)`` per turn after near-duplicate removal."""
    removed = {r.turn for r in dialogue.removed_images or []}
    return [(turn.message, None if t in removed else turn.image_blob) for t, turn in enumerate(dialogue.turns)]


def user_text(message: str, blob: str | None) -> str:
    """A turn's text in the dataset form: ``<image>`` placeholder first when the turn shows a picture."""
    return f"{IMAGE_PLACEHOLDER}\n{message}" if blob is not None else message


def find_duplicates(ctx: StageContext, dialogue: DialogueState) -> list[RemovedImage]:
    """The near-duplicate images of ``dialogue`` (later copies of an earlier image)."""
    cfg = ctx.config.clean
    shown = [(t, turn.image_blob) for t, turn in enumerate(dialogue.turns) if turn.image_blob is not None]
    duplicates = near_duplicates([ctx.blob(blob) for _, blob in shown], cfg.max_distance, cfg.hash_size)
    return [RemovedImage(turn=shown[d.index][0], duplicate_of_turn=shown[d.duplicate_of][0], distance=d.distance) for d in duplicates]


async def _clean_dialogue(ctx: StageContext, item: ItemState, dialogue: DialogueState) -> None:
    if dialogue.removed_images is None:
        dialogue.removed_images = find_duplicates(ctx, dialogue)
        await ctx.save(item)
    turns = kept_turns(dialogue)
    transcript = "\n".join(f"Turn {k} (user){' [image]' if blob else ''}: {message}" for k, (message, blob) in enumerate(turns, start=1))
    text = ctx.prompts.render("judge", transcript=quoted("CONVERSATION", transcript), num_turns=len(turns))
    images = [ctx.blob(blob) for _, blob in turns if blob is not None]
    verdict = await ctx.chat(
        item, "judge", STAGE, system_and_user(ctx.prompts.text("judge_system"), text, images), parser(RiskVerdict), RiskVerdict
    )
    dialogue.verdict = verdict.model_dump()
    risk = verdict.risk / 10.0
    dialogue.kept = verdict.risk_identifiable and risk >= ctx.config.clean.min_risk
    if not dialogue.kept:
        why = "no identifiable risk" if not verdict.risk_identifiable else f"risk {risk:.2f} < min_risk {ctx.config.clean.min_risk:.2f}"
        dialogue.drop_reason = f"judge: {why} ({verdict.rationale})"
    await ctx.save(item)


async def run_clean(ctx: StageContext, item: ItemState) -> None:
    """Advance ``item`` through the clean stage: every dialogue gets ``kept`` true or false; status ``cleaned``."""
    pending = [item.dialogues[v.name] for v in ctx.config.victims if item.dialogues[v.name].kept is None]
    results = await asyncio.gather(*(_clean_dialogue(ctx, item, d) for d in pending), return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    item.status = "cleaned"
    await ctx.save(item)
