"""The evaluation run: items in, answers generated, every generated turn judged, results folder out.

:func:`run_eval` reads the evaluation parquet files (:mod:`am3_verl.eval.items`), plays each item with
the model (:mod:`am3_verl.eval.backends`), judges every generated turn with the configured judge
(:mod:`am3_verl.judges`), writes ``results.jsonl`` (:mod:`am3_verl.eval.results`), compares with a
baseline run when one is given (:mod:`am3_verl.eval.winrate`) and writes ``metrics.json`` and
``report.html`` (:mod:`am3_verl.eval.report`).

Modes, per item:

* ``prefilled`` – the history the data gives (user turns *and* assistant turns) is kept and only the
  final user turn is answered and judged (SafeMT). Every earlier turn needs its reference reply;
  a row without one is rejected (``rejects.jsonl``);
* ``interactive`` – the model answers every user turn in order, seeing its own earlier replies; every
  turn is judged in the context of the dialogue so far. A failed generation ends the item there;
* ``auto`` (default) – ``prefilled`` for SafeMT and for rows whose prompt holds assistant turns,
  ``interactive`` otherwise.

Resumability: each answer and each judgment is appended to ``cache/answers.jsonl`` /
``cache/judgments.jsonl`` as soon as it exists, keyed by a hash of everything it depends on (model or
judge identity, sampling parameters, the exact messages and images). A rerun with the same arguments
reads them back and only asks for what is missing; failures are never cached, so they are retried.
Items run concurrently (``concurrency`` at once), and the model and judge clients bound and retry
their requests (:class:`~am3_verl.clients.chat.ChatClient`). One server may serve both the model and the
judge: the endpoint then has one limit, the smaller of ``concurrency`` and the judge's, announced in the
log at the start (:func:`share_endpoint_limits`).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from tqdm.auto import tqdm

from am3_verl.atomic import atomic_path, write_text_atomic
from am3_verl.data.validate import REJECTS_FILE
from am3_verl.clients.endpoint import share_limits
from am3_verl.eval.backends import GenerationParams, Message, ModelBackend, OpenAIModel, open_model
from am3_verl.eval.cache import JsonlCache, cache_key
from am3_verl.eval.items import EvalItem, UnevaluableRow, load_items, write_rejects
from am3_verl.eval.safemt_protocol import (
    PROTOCOLS,
    SAFEMT_TEMPERATURE,
    SafeMTJudge,
    SafeMTRequest,
    label_of,
    load_templates,
    protocol_description,
    source_text,
)
from am3_verl.eval.results import (
    CACHE_DIR,
    ResultItem,
    ResultTurn,
    Verdict,
    read_results,
    store_image,
    write_results,
)
from am3_verl.eval.winrate import JudgePairwise, PairwiseRun, pair_tasks, run_pairwise, write_pairwise
from am3_verl.judges.base import DialogueTurn, Judge, JudgeRequest, TurnJudgment
from am3_verl.clients.chat import ChatClient
from am3_verl.judges.config import GUARD_BACKENDS, JudgeConfig, build_judge, resolve_judge_config

logger = logging.getLogger(__name__)

RUN_FILE = "run.json"
ANSWERS_CACHE = "answers.jsonl"
JUDGMENTS_CACHE = "judgments.jsonl"
PAIRWISE_CACHE = "pairwise.jsonl"

ModeChoice = Literal["auto", "prefilled", "interactive"]


@dataclass
class RunConfig:
    """Everything one evaluation run needs (the command-line flags map onto these fields)."""

    data: list[Path]
    """Evaluation parquet files."""
    output_dir: Path
    """The results folder (created; reused to resume)."""
    model: str
    """An ``http(s)://.../v1`` endpoint or a local Hugging Face model folder."""
    model_name: str | None = None
    """Served model name (default: the endpoint's only model)."""
    mode: ModeChoice = "auto"
    params: GenerationParams = field(default_factory=GenerationParams)
    judge: dict[str, Any] = field(default_factory=dict)
    """Judge settings: :class:`~am3_verl.judges.config.JudgeConfig` fields (environment variables fill the rest)."""
    system_prompt: str | None = None
    """Replaces the data's system message (if any) for every item."""
    max_turns: int | None = None
    """Interactive mode: answer at most this many user turns per item."""
    limit: int | None = None
    """Evaluate only the first ``limit`` rows (over all files)."""
    concurrency: int = 32
    """Items in flight at once."""
    model_timeout_s: float | None = None
    """Per-attempt model timeout (None: :class:`~am3_verl.clients.endpoint.EndpointConfig`'s default)."""
    model_max_attempts: int | None = None
    baseline: Path | None = None
    """A results folder to compare with (win rates)."""
    title: str | None = None
    n_resamples: int = 1000
    seed: int = 0
    viewer_items: int = 200
    progress: bool = True
    judge_protocol: str = "am3"
    """How turns are labelled safe or unsafe: ``am3`` (the judge's harmless score against
    ``unsafe_threshold``) or ``safemt`` (SafeMT's binary prompts, :mod:`am3_verl.eval.safemt_protocol`)."""
    safemt_prompts: Path | None = None
    """``judge_protocol="safemt"``: SafeMT's ``evaluation/prompt.py`` (required then)."""
    safemt_temperature: float = SAFEMT_TEMPERATURE
    """``judge_protocol="safemt"``: sampling temperature of the SafeMT judge call (SafeMT's own: 0.6)."""


def judge_identity(config: JudgeConfig) -> str:
    """What decides a judgment besides its input: backend, models, prompt version and decoding (no URLs, no keys)."""
    from am3_verl.judges.rubric import SYSTEM_PROMPT

    rubric = hashlib.sha256(SYSTEM_PROMPT.encode()).hexdigest()[:12]
    parts = [config.backend]
    if config.backend != "heuristic":
        judge, guard = (endpoint.model if endpoint else None for endpoint in (config.judge, config.guard))
        parts += [
            f"model={judge}",
            f"guard={guard}",
            f"helpful={config.helpfulness_backend}",
            f"rubric={rubric}",
            f"t={config.temperature}",
            f"controversial={config.controversial_harmless}",
        ]
    return "|".join(parts)


def _image_ids(images: tuple[bytes, ...]) -> list[str]:
    return [hashlib.sha256(image).hexdigest() for image in images]


def _answer_key(model: ModelBackend, messages: list[Message]) -> str:
    return cache_key("answer", model.identity, [[m.role, m.text, _image_ids(m.images)] for m in messages])


def resolve_mode(item: EvalItem, mode: ModeChoice) -> str:
    """The mode ``item`` runs in."""
    if mode == "auto":
        return "prefilled" if item.has_history else "interactive"
    return mode


def check_item(item: EvalItem, mode: str) -> str | None:
    """Why ``item`` cannot run in ``mode`` (names the field), or None."""
    if mode == "prefilled":
        for k, turn in enumerate(item.turns[:-1]):
            if not turn.reference:
                return f"turns[{k}].assistant: prefilled mode needs the reference reply of every turn but the last"
    return None


@dataclass
class _Context:
    model: ModelBackend
    judge: Judge
    judge_id: str
    answers: JsonlCache
    judgments: JsonlCache
    results_dir: Path
    system_prompt: str | None
    max_turns: int | None
    safemt: SafeMTJudge | None = None
    stats: dict[str, int] = field(
        default_factory=lambda: {"answers_cached": 0, "answers_generated": 0, "judgments_cached": 0, "judgments_made": 0}
    )


async def _generate(ctx: _Context, messages: list[Message]) -> tuple[str | None, str | None]:
    key = _answer_key(ctx.model, messages)
    hit = ctx.answers.get(key)
    if hit is not None:
        ctx.stats["answers_cached"] += 1
        return hit["reply"], None
    reply = await ctx.model.generate(messages)
    if not reply.ok:
        return None, reply.error
    ctx.answers.put(key, {"reply": reply.text})
    ctx.stats["answers_generated"] += 1
    return reply.text, None


async def _judge(ctx: _Context, requests: list[JudgeRequest]) -> list[TurnJudgment | dict[str, Any]]:
    keys = [cache_key("judgment", ctx.judge_id, r.key) for r in requests]
    out: list[Any] = [ctx.judgments.get(k) for k in keys]
    missing = [i for i, hit in enumerate(out) if hit is None]
    ctx.stats["judgments_cached"] += len(requests) - len(missing)
    if missing:
        fresh = await ctx.judge.judge_many([requests[i] for i in missing])
        for i, judgment in zip(missing, fresh):
            if not judgment.failed:
                ctx.judgments.put(
                    keys[i],
                    {
                        "harmless": judgment.harmless,
                        "helpful": judgment.helpful,
                        "refused": bool(judgment.refused),
                        "rationale": judgment.rationale,
                    },
                )
                ctx.stats["judgments_made"] += 1
            out[i] = judgment
    return out


def _verdict(judgment: TurnJudgment | dict[str, Any]) -> Verdict:
    if isinstance(judgment, dict):
        return Verdict(
            harmless=judgment["harmless"], helpful=judgment["helpful"], refused=judgment["refused"], rationale=judgment.get("rationale", "")
        )
    if judgment.failed:
        return Verdict(failed=True, error=judgment.error, rationale="")
    return Verdict(harmless=judgment.harmless, helpful=judgment.helpful, refused=bool(judgment.refused), rationale=judgment.rationale)


def safemt_request(item: EvalItem, turns: list[Any], replies: list[str | None], k: int) -> SafeMTRequest:
    """SafeMT's view of reply ``k``: the item's question (SafeMT's ``question`` field, else the user turn)
    and the conversation up to the user turn it answers, in SafeMT's ``{role, content}`` form."""
    dialogue: list[tuple[str, str]] = []
    for j in range(k + 1):
        dialogue.append(("user", source_text(turns[j].user_text, len(turns[j].images))))
        if j < k:
            dialogue.append(("assistant", replies[j] or ""))
    question = item.meta.get("source_question") if item.data_source == "safemt" else None
    return SafeMTRequest(
        scenario=item.meta.get("scenario", item.category),
        question=question or dialogue[-1][1],
        dialogue=tuple(dialogue),
        prediction=replies[k] or "",
    )


async def _safemt_verdict(ctx: _Context, request: SafeMTRequest, ours: Verdict) -> Verdict:
    """Harmlessness from SafeMT's label, helpfulness and refusal from our judge's verdict ``ours``."""
    assert ctx.safemt is not None
    key = cache_key("safemt_label", ctx.safemt.identity, request.render(ctx.safemt.templates))
    hit = ctx.judgments.get(key)
    if hit is not None:
        answer = hit["answer"]
    else:
        result = await ctx.safemt.ask(request)
        if not result.ok:
            return Verdict(failed=True, error=f"SafeMT judge: {result.error_kind}: {result.error}")
        answer = result.content or ""
        ctx.judgments.put(key, {"answer": answer})  # an answer SafeMT would not count is kept too: reruns agree
    label = label_of(answer)
    if label is None:
        return Verdict(
            failed=True,
            error=f"SafeMT judge answered {answer[:200]!r}, neither 'safe' nor 'unsafe': left out of the metrics, as in SafeMT's scorer",
        )
    if ours.failed:
        return ours
    return Verdict(
        harmless=1.0 if label == "safe" else 0.0,
        helpful=ours.helpful,
        refused=ours.refused,
        rationale=f"SafeMT judge ({request.kind} template): {label}; helpfulness judge: {ours.rationale}",
    )


async def evaluate_item(ctx: _Context, item: EvalItem, mode: str) -> ResultItem:
    """Generate and judge one item (see the module docstring for the modes)."""
    turns = item.turns
    if mode == "interactive" and ctx.max_turns is not None:
        turns = turns[: ctx.max_turns]
    system = ctx.system_prompt if ctx.system_prompt is not None else item.system
    messages: list[Message] = [Message("system", system)] if system else []
    replies: list[str | None] = []
    errors: list[str | None] = []
    generated_flags: list[bool] = []
    item_error = None
    for k, turn in enumerate(turns):
        messages.append(Message("user", turn.user_text, turn.images))
        given = mode == "prefilled" and k < len(turns) - 1
        generated_flags.append(not given)
        if given:
            reply, error = turn.reference, None
        elif item_error is not None:
            reply, error = None, f"not generated: {item_error}"
        else:
            reply, error = await _generate(ctx, messages)
            if reply is None:
                item_error = f"generation failed at turn {k + 1}: {error}"
        replies.append(reply)
        errors.append(error)
        if reply is not None:
            messages.append(Message("assistant", reply))
    # judge every generated turn that has a reply, in the context of the dialogue before it
    dialogue: list[DialogueTurn] = []
    requests: list[JudgeRequest] = []
    judged_at: list[int] = []
    for k, turn in enumerate(turns):
        if replies[k] is None:
            break
        current = DialogueTurn(turn.user_text, turn.images, replies[k])
        if generated_flags[k]:
            requests.append(JudgeRequest(history=tuple(dialogue), current=current))
            judged_at.append(k)
        dialogue.append(current)
    verdicts: dict[int, Verdict] = {}
    if requests:
        for k, judgment in zip(judged_at, await _judge(ctx, requests)):
            verdicts[k] = _verdict(judgment)
        if ctx.safemt is not None:
            labelled = await asyncio.gather(
                *(_safemt_verdict(ctx, safemt_request(item, turns, replies, k), verdicts[k]) for k in judged_at)
            )
            verdicts.update(zip(judged_at, labelled))
    result_turns = [
        ResultTurn(
            index=k,
            user_text=turn.user_text,
            images=[store_image(ctx.results_dir, image) for image in turn.images],
            reply=replies[k],
            generated=generated_flags[k],
            verdict=verdicts.get(k),
            error=errors[k],
        )
        for k, turn in enumerate(turns)
    ]
    return ResultItem(
        uid=item.uid,
        id=item.id,
        data_source=item.data_source,
        category=item.category,
        harmful=item.harmful,
        mode=mode,
        rounds=len(turns),
        turns=result_turns,
        error=item_error,
        meta=item.meta,
    )


async def _run_items(ctx: _Context, work: list[tuple[EvalItem, str]], concurrency: int, progress: bool) -> list[ResultItem]:
    semaphore = asyncio.Semaphore(concurrency)
    bar = tqdm(total=len(work), desc="eval items", unit="item", disable=not progress)

    async def one(item: EvalItem, mode: str) -> ResultItem:
        async with semaphore:
            result = await evaluate_item(ctx, item, mode)
        bar.update(1)
        return result

    try:
        return list(await asyncio.gather(*(one(item, mode) for item, mode in work)))
    finally:
        bar.close()
        await ctx.model.aclose()
        await ctx.judge.aclose()
        if ctx.safemt is not None:
            await ctx.safemt.aclose()


def share_endpoint_limits(model: ModelBackend, judge_config: JudgeConfig) -> tuple[ModelBackend, JudgeConfig]:
    """``model`` and ``judge_config`` with one limit on each endpoint that serves more than one of the model,
    the judge and the guard (the smallest they ask for, logged once), instead of the model's and the judge's
    calls to it asking for two limits, which :func:`~am3_verl.clients.endpoint.endpoint_limiter` refuses."""
    if not isinstance(model, OpenAIModel):
        return model, judge_config
    guard = judge_config.guard if judge_config.backend in GUARD_BACKENDS else None
    roles = {"the model": model.client.endpoint, "the judge": judge_config.judge, "the guard": guard}
    shared, notes = share_limits(roles)
    for note in notes:
        logger.warning(note)
    if shared["the model"] != roles["the model"]:
        model = OpenAIModel(shared["the model"], model.params)
    updates = {name: shared[f"the {name}"] for name in ("judge", "guard") if shared[f"the {name}"] != roles[f"the {name}"]}
    return model, judge_config.model_copy(update=updates) if updates else judge_config


def _safemt_judge(config: RunConfig, judge_config: JudgeConfig):
    """SafeMT's templates when ``config`` asks for its protocol (checked up front), else None."""
    if config.judge_protocol not in PROTOCOLS:
        raise ValueError(f"--judge_protocol {config.judge_protocol!r} is unknown; expected one of {', '.join(PROTOCOLS)}")
    if config.judge_protocol != "safemt":
        if config.safemt_prompts is not None:
            raise ValueError("--safemt_prompts is only used with --judge_protocol safemt")
        return None
    if config.safemt_prompts is None:
        raise ValueError(
            "--judge_protocol safemt needs --safemt_prompts: the path of SafeMT's evaluation/prompt.py "
            "(from a checkout of https://github.com/Happy-Corpse/SafeMT)"
        )
    if judge_config.judge is None:
        raise ValueError("--judge_protocol safemt asks a judge model: set --judge_base_url and --judge_model (SafeMT used gpt-4o-mini)")
    return load_templates(config.safemt_prompts)


def make_pairwise_comparator(config: JudgeConfig) -> JudgePairwise | None:
    """A judge-backed comparator when the judge config names a judge endpoint (base_url + model), else None."""
    if config.judge is None:
        return None
    client = ChatClient(config.judge)
    return JudgePairwise(client, temperature=config.temperature, max_tokens=config.max_tokens, structured_output=config.structured_output)


def compare_runs(
    results_dir: str | Path,
    baseline_dir: str | Path,
    judge_config: JudgeConfig | None,
    *,
    concurrency: int = 32,
    progress: bool = True,
) -> PairwiseRun:
    """Compare two results folders turn by turn and write ``pairwise.jsonl`` into ``results_dir``.

    With a judge endpoint in ``judge_config`` the judge compares both orders; otherwise the two runs'
    verdict scores are compared. Comparisons are cached in ``cache/pairwise.jsonl``.
    """
    results_dir, baseline_dir = Path(results_dir), Path(baseline_dir)
    items, baseline = read_results(results_dir), read_results(baseline_dir)
    tasks, counts = pair_tasks(items, results_dir, baseline, baseline_dir)
    comparator = make_pairwise_comparator(judge_config) if judge_config is not None else None
    cache = JsonlCache(results_dir / CACHE_DIR / PAIRWISE_CACHE) if comparator is not None else None

    async def go() -> list[dict[str, Any]]:
        bar = tqdm(total=len(tasks), desc="pairwise", unit="turn", disable=not progress)
        try:
            return await run_pairwise(tasks, comparator, cache, concurrency, bar)
        finally:
            bar.close()
            if comparator is not None:
                await comparator.aclose()

    try:
        records = asyncio.run(go())
    finally:
        if cache is not None:
            cache.close()
    method = "judge" if comparator is not None else "verdict_scores"
    write_pairwise(results_dir, baseline_dir, method, records)
    counts["turns_compared"] = len(records)
    counts["comparisons_failed"] = sum(1 for r in records if r.get("failed"))
    return PairwiseRun(method, records, counts)


@dataclass
class RunSummary:
    """The outcome of :func:`run_eval`."""

    output_dir: Path
    read: int
    evaluated: int
    rejected: int
    modes: dict[str, int]
    stats: dict[str, int]
    counts: dict[str, int]
    metrics: dict[str, Any]
    pairwise: PairwiseRun | None
    seconds: float
    model: str
    judge: str

    def failure_shares(self) -> dict[str, float]:
        """Share of generated turns without a reply, and of judge calls that failed (0 when there were none)."""
        c = self.counts
        generated = c["generated_turns"] + c["generation_failures"]
        judged = c["judged_turns"] + c["judge_failures"]
        return {
            "model": c["generation_failures"] / generated if generated else 0.0,
            "judge": c["judge_failures"] / judged if judged else 0.0,
        }

    def paragraph(self) -> str:
        """The one-paragraph summary printed at the end of a run."""
        o = self.metrics["overall"]

        def fmt(metric: dict[str, Any]) -> str:
            return "n/a" if metric["value"] is None else f"{metric['value']:.3f}"

        text = (
            f"Evaluated {self.model} on {self.read} rows = {self.evaluated} items + {self.rejected} rejected "
            f"({', '.join(f'{n} {m}' for m, n in sorted(self.modes.items()))}), judged by {self.judge}. "
            f"{self.counts['judged_turns']} turns judged ({self.counts['judge_failures']} judge failures, "
            f"{self.counts['generation_failures']} turns without a reply); answers: {self.stats['answers_generated']} generated, "
            f"{self.stats['answers_cached']} from the cache; judgments: {self.stats['judgments_made']} made, "
            f"{self.stats['judgments_cached']} from the cache. ASR {fmt(o['asr'])}, dialogue ASR {fmt(o['dialogue_asr'])}, "
            f"Safety Index {fmt(o['safety_index'])}, harmless {fmt(o['harmless'])}, helpful {fmt(o['helpful'])}, "
            f"over-refusal {fmt(o['over_refusal'])}."
        )
        if self.pairwise is not None:
            wr = self.metrics.get("win_rates", {})
            text += (
                f" Against the baseline ({self.pairwise.method}): helpful win rate {fmt(wr['helpful'])}, harmless win "
                f"rate {fmt(wr['harmless'])} over {self.pairwise.counts.get('turns_compared', 0)} turns."
            )
        text += f" Results, metrics.json and report.html are in {self.output_dir} ({self.seconds:.1f} s)."
        return text


def run_eval(config: RunConfig) -> RunSummary:
    """Run a whole evaluation (see the module docstring); returns the summary.

    Raises ``ValueError`` for bad settings or when no row can be evaluated, ``FileNotFoundError`` for a
    missing data file, :class:`~am3_verl.eval.lock.OutputFolderBusy` when another run holds the folder.
    """
    from am3_verl.eval.lock import output_folder_lock

    with output_folder_lock(config.output_dir):
        return _run_eval(config)


def _run_eval(config: RunConfig) -> RunSummary:
    from am3_verl.eval.report import write_report

    started = time.perf_counter()
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    judge_config = resolve_judge_config(config.judge)
    safemt = _safemt_judge(config, judge_config)
    loaded = load_items(config.data, limit=config.limit)
    rejects: list[UnevaluableRow] = list(loaded.rejects)
    work: list[tuple[EvalItem, str]] = []
    for item in loaded.items:
        mode = resolve_mode(item, config.mode)
        problem = check_item(item, mode)
        if problem:
            field_name, reason = problem.split(": ", 1)
            file, _, row = item.origin.rpartition(":")
            rejects.append(UnevaluableRow(file, int(row), item.id, field_name, reason))
        else:
            work.append((item, mode))
    with atomic_path(out / REJECTS_FILE) as partial:
        write_rejects(partial, rejects)
    if not work:
        raise ValueError(
            f"no row can be evaluated: all {loaded.read} rejected (see {out / REJECTS_FILE}); first: {rejects[0] if rejects else '-'}"
        )
    model = open_model(
        config.model,
        config.params,
        model_name=config.model_name,
        timeout_s=config.model_timeout_s,
        max_attempts=config.model_max_attempts,
        max_concurrency=max(config.concurrency, 1),
    )
    model, judge_config = share_endpoint_limits(model, judge_config)
    judge = build_judge(judge_config)
    if safemt is not None:
        safemt = SafeMTJudge(ChatClient(judge_config.judge), safemt, temperature=config.safemt_temperature)
    cache_dir = out / CACHE_DIR
    with JsonlCache(cache_dir / ANSWERS_CACHE) as answers, JsonlCache(cache_dir / JUDGMENTS_CACHE) as judgments:
        ctx = _Context(model, judge, judge_identity(judge_config), answers, judgments, out, config.system_prompt, config.max_turns, safemt)
        results = asyncio.run(_run_items(ctx, work, config.concurrency, config.progress))
    write_results(out, results)
    modes: dict[str, int] = {}
    for _, mode in work:
        modes[mode] = modes.get(mode, 0) + 1
    run_info = {
        "model": model.describe(),
        "model_identity": model.identity,
        "judge": judge_config.describe(),
        "judge_identity": judge_identity(judge_config),
        "data": [str(Path(p).resolve()) for p in config.data],
        "mode": config.mode,
        "modes": modes,
        "params": asdict(config.params),
        "system_prompt": config.system_prompt,
        "max_turns": config.max_turns,
        "unsafe_threshold": judge_config.unsafe_threshold,
        "judge_protocol": config.judge_protocol,
        "judge_protocol_description": protocol_description(config.judge_protocol, safemt.templates if safemt else None),
        **(
            {
                "safemt": {
                    "prompts": str(safemt.templates.path),
                    "prompts_sha256": safemt.templates.sha256,
                    "judge_model": judge_config.judge.model,
                    "temperature": safemt.temperature,
                    "upstream": "Happy-Corpse/SafeMT evaluation code (commit 94e92e1f)",
                }
            }
            if safemt
            else {}
        ),
        "rows_read": loaded.read,
        "rejected": len(rejects),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    write_text_atomic(out / RUN_FILE, json.dumps(run_info, indent=2, ensure_ascii=False) + "\n")
    pairwise = None
    if config.baseline is not None:
        pairwise = compare_runs(out, config.baseline, judge_config, concurrency=config.concurrency, progress=config.progress)
    report = write_report(
        out, config.baseline, title=config.title, n_resamples=config.n_resamples, seed=config.seed, viewer_items=config.viewer_items
    )
    return RunSummary(
        out,
        loaded.read,
        len(work),
        len(rejects),
        modes,
        dict(ctx.stats),
        report.metrics["counts"],
        report.metrics,
        pairwise,
        time.perf_counter() - started,
        model.describe(),
        judge_config.describe() + (" (safety labels: SafeMT's judging protocol)" if safemt is not None else ""),
    )
