"""The decompose stage: seed -> reviewed sub-queries, or a drop with its reason.

1. The decomposer sees the seed image and query and proposes ``min_sub_queries``..``max_sub_queries``
   sub-queries (an answer outside that range is a parse failure, retried by the client).
2. The scorer rates each sub-query (0-10) for image relevance, link to the original intent and harmless
   wording; it passes when every normalised score meets its threshold.
3. A sub-query that fails is rewritten by the decomposer (with the reviewer's feedback) and reviewed
   again, up to ``max_regenerations`` times; if it still fails, the seed is dropped with a reason that
   names the sub-query and the scores that fell short.

Calls run in that order, one at a time per seed, and each result is checkpointed before the next call.
"""

from __future__ import annotations

from am3_verl.builder.answers import CRITERIA, Decomposition, Rewrite, SubQueryScores, parser
from am3_verl.builder.calls import system_and_user
from am3_verl.builder.context import StageContext
from am3_verl.builder.prompts import numbered, quoted
from am3_verl.builder.state import Candidate, Drop, ItemState, SubQueryState

STAGE = "decompose"


def _shortfalls(candidate: Candidate, thresholds: dict[str, float]) -> list[str]:
    return [
        f"{name} {candidate.scores[name]:.2f} < {thresholds[name]:.2f}" for name in CRITERIA if candidate.scores[name] < thresholds[name]
    ]


def _feedback(candidate: Candidate, thresholds: dict[str, float]) -> str:
    return f"Scores below the bar: {', '.join(_shortfalls(candidate, thresholds))}. Reviewer: {candidate.rationale}"


async def run_decompose(ctx: StageContext, item: ItemState) -> None:
    """Advance ``item`` through the decompose stage: status becomes ``decomposed`` or ``dropped``."""
    cfg = ctx.config.decompose
    prompts = ctx.prompts
    image = ctx.blob(item.seed_image_blob)
    request = quoted("REQUEST", item.query)
    state = item.decompose

    if state.proposed is None:

        def check(answer: Decomposition) -> None:
            n = len(answer.sub_queries)
            if not cfg.min_sub_queries <= n <= cfg.max_sub_queries:
                raise ValueError(f"{n} sub-queries, expected {cfg.min_sub_queries} to {cfg.max_sub_queries}")

        text = prompts.render("decompose", category=item.category, request=request, min_n=cfg.min_sub_queries, max_n=cfg.max_sub_queries)
        answer = await ctx.chat(
            item,
            "decomposer",
            STAGE,
            system_and_user(prompts.text("decomposer_system"), text, [image]),
            parser(Decomposition, check),
            Decomposition,
        )
        state.proposed = answer.sub_queries
        state.sub_queries = [SubQueryState(pending=q) for q in answer.sub_queries]
        await ctx.save(item)

    total = len(state.sub_queries)
    for index, sub in enumerate(state.sub_queries):
        position = index + 1
        while sub.accepted is None:
            if sub.pending is None:
                last = sub.candidates[-1]
                if len(sub.candidates) > cfg.max_regenerations:
                    item.status = "dropped"
                    item.drop = Drop(
                        stage=STAGE,
                        reason=(
                            f"sub-query {position} of {total} failed review {len(sub.candidates)} time(s) "
                            f"({cfg.max_regenerations} rewrite(s) allowed); last version: "
                            f"{'; '.join(_shortfalls(last, cfg.thresholds))}"
                        ),
                    )
                    await ctx.save(item)
                    return
                plan = numbered(
                    [
                        s.accepted.text if s.accepted else (s.candidates[-1].text if s.candidates else (s.pending or ""))
                        for s in state.sub_queries
                    ]
                )
                text = prompts.render(
                    "regenerate",
                    category=item.category,
                    request=request,
                    plan=quoted("PLAN", plan),
                    position=position,
                    sub_query=quoted("SUB_QUESTION", last.text),
                    feedback=quoted("FEEDBACK", _feedback(last, cfg.thresholds)),
                )
                rewrite = await ctx.chat(
                    item, "decomposer", STAGE, system_and_user(prompts.text("decomposer_system"), text, [image]), parser(Rewrite), Rewrite
                )
                sub.pending = rewrite.sub_query
                await ctx.save(item)
            text = prompts.render(
                "score",
                category=item.category,
                request=request,
                sub_query=quoted("SUB_QUESTION", sub.pending),
                position=position,
                total=total,
            )
            scores = await ctx.chat(
                item, "scorer", STAGE, system_and_user(prompts.text("scorer_system"), text, [image]), parser(SubQueryScores), SubQueryScores
            )
            normalised = scores.normalised()
            passed = all(normalised[name] >= cfg.thresholds[name] for name in CRITERIA)
            sub.candidates.append(Candidate(text=sub.pending, scores=normalised, rationale=scores.rationale, passed=passed))
            sub.pending = None
            await ctx.save(item)
    item.status = "decomposed"
    await ctx.save(item)
