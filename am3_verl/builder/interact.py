"""The interact stage: the attacker delivers one sub-query per turn to every victim model.

For each victim (in parallel) and each sub-query (in order):

1. the attacker ("safety expert", seeing the seed image, the hidden goal, the plan and the conversation so
   far with the victim's replies quoted as data) writes the user's message and picks a picture: none, the
   seed image again, or a new one described for the text-to-image model. The first turn always shows
   the seed image. A new picture beyond ``interact.max_new_images`` (or with text-to-image disabled) is
   downgraded to none and marked ``denied_new_image``;
2. a requested picture is drawn; the description stays with the attacker, only the picture goes on;
3. the victim answers, seeing the whole conversation: every earlier user turn with its picture and its
   own earlier replies.

Each of these results is checkpointed as soon as it arrives.
"""

from __future__ import annotations

import asyncio
from typing import Any

from am3_verl.builder.answers import AttackerMove, non_empty_reply, parser
from am3_verl.builder.calls import system_and_user, user_content
from am3_verl.builder.config import VictimConfig
from am3_verl.builder.context import StageContext
from am3_verl.builder.prompts import numbered, quoted
from am3_verl.builder.state import DialogueState, ItemState, TurnState

STAGE = "interact"


def _check_move(move: AttackerMove) -> None:
    if move.image == "new" and not move.image_description.strip():
        raise ValueError('image is "new" but image_description is empty')


def _history(turns: list[TurnState], no_history: str) -> str:
    if not turns:
        return no_history
    lines = []
    for k, turn in enumerate(turns, start=1):
        picture = {
            "none": "no picture",
            "seed": "showing the reference image",
            "new": f"showing a new picture of: {turn.image_description}",
        }[turn.image]
        lines.append(f"Turn {k}, user ({picture}): {turn.message}")
        lines.append(f"Turn {k}, assistant: {turn.victim_reply}")
    return "\n".join(lines)


def _victim_messages(ctx: StageContext, victim: VictimConfig, turns: list[TurnState]) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = [{"role": "system", "content": victim.system_prompt}] if victim.system_prompt else []
    for turn in turns:
        images = [ctx.blob(turn.image_blob)] if turn.image_blob is not None else []
        messages.append({"role": "user", "content": user_content(turn.message, images)})
        if turn.victim_reply is not None:
            messages.append({"role": "assistant", "content": turn.victim_reply})
    return messages


def _new_images_used(dialogue: DialogueState) -> int:
    return sum(1 for turn in dialogue.turns if turn.image == "new")


async def _attacker_move(ctx: StageContext, item: ItemState, dialogue: DialogueState, sub_queries: list[str], t: int) -> TurnState:
    prompts = ctx.prompts
    remaining = ctx.config.interact.max_new_images - _new_images_used(dialogue)
    if t == 0:
        options = prompts.render("image_options_first")
    elif ctx.images is not None and remaining > 0:
        options = prompts.render("image_options_with_new", remaining=remaining)
    else:
        options = prompts.render("image_options_no_new")
    text = prompts.render(
        "attack_turn",
        category=item.category,
        goal=quoted("GOAL", item.query),
        plan=quoted("PLAN", numbered(sub_queries)),
        history=quoted("CONVERSATION", _history(dialogue.turns, prompts.text("no_history"))),
        turn=t + 1,
        total=len(sub_queries),
        current=quoted("CURRENT", sub_queries[t]),
        image_options=options,
    )
    messages = system_and_user(prompts.text("attacker_system"), text, [ctx.blob(item.seed_image_blob)])
    move = await ctx.chat(item, "attacker", STAGE, messages, parser(AttackerMove, _check_move), AttackerMove)
    turn = TurnState(
        message=move.message, image=move.image, image_description=move.image_description.strip() if move.image == "new" else ""
    )
    if t == 0:
        turn.image, turn.image_description = "seed", ""
    elif turn.image == "new" and (ctx.images is None or remaining <= 0):
        turn.image, turn.denied_new_image = "none", True
    if turn.image == "seed":
        turn.image_blob = item.seed_image_blob
    return turn


async def _run_dialogue(ctx: StageContext, item: ItemState, victim: VictimConfig, sub_queries: list[str]) -> None:
    dialogue = item.dialogues[victim.name]
    for t in range(len(sub_queries)):
        if t < len(dialogue.turns) and dialogue.turns[t].victim_reply is not None:
            continue
        if t == len(dialogue.turns):
            dialogue.turns.append(await _attacker_move(ctx, item, dialogue, sub_queries, t))
            await ctx.save(item)
        turn = dialogue.turns[t]
        if turn.image == "new" and turn.image_blob is None:
            turn.image_blob = await ctx.draw(item, STAGE, turn.image_description)
            await ctx.save(item)
        reply = await ctx.chat(
            item, f"victim:{victim.name}", STAGE, _victim_messages(ctx, victim, dialogue.turns[: t + 1]), non_empty_reply
        )
        turn.victim_reply = reply
        await ctx.save(item)
    dialogue.interacted = True
    await ctx.save(item)


async def run_interact(ctx: StageContext, item: ItemState) -> None:
    """Advance ``item`` through the interact stage: one dialogue per victim; status becomes ``interacted``.

    Victims run in parallel; if one fails after its retries the others still finish their dialogues,
    then :class:`StageFailed` is raised (a rerun continues the failed one).
    """
    sub_queries = item.decompose.final_texts()
    if not sub_queries:
        raise RuntimeError(f"seed {item.seed_id}: interact reached without accepted sub-queries")
    for victim in ctx.config.victims:
        item.dialogues.setdefault(victim.name, DialogueState(victim=victim.name))
    pending = [v for v in ctx.config.victims if not item.dialogues[v.name].interacted]
    results = await asyncio.gather(*(_run_dialogue(ctx, item, v, sub_queries) for v in pending), return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    item.status = "interacted"
    await ctx.save(item)
