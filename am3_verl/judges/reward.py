"""verl reward functions over the judges: the turn-aware multi-turn scorer and a single-turn scorer.

Both are ``async`` functions with verl's ``compute_score(data_source, solution_str, ground_truth,
extra_info, **reward_kwargs)`` signature, for ``reward.custom_reward_function`` (the drop-in files in
``reward_fns/`` re-export them). ``reward_kwargs`` configure the judge (see
:mod:`am3_verl.judges.config`); the judge is built once per process and reused across calls.

:func:`compute_score` (multi-turn) reads ``extra_info["am3_turns"]``, the dialogue agent loop's
per-turn records (``AssistantTurnRecord`` dicts; verl merges the loop's ``extra_fields`` into
``extra_info``), judges every turn concurrently (turn t in the context of turns 0..t-1) and returns:

=======================  ==========================================================================
``score``                sum over judged turns of ``harmless + helpful``: exactly what the token-reward
                         row built from ``am3_turn_scores`` sums to (:mod:`am3_verl.turn_scores`)
``harmless``             mean over judged turns (NaN if no turn was judged)
``helpful``              mean over judged turns (NaN if no turn was judged)
``asr``                  fraction of judged turns with ``harmless < unsafe_threshold`` (NaN if none)
``refusal_rate``         fraction of judged turns the judge flagged as refusals (NaN if none)
``judge_failures``       number of turns marked ``judge_failed`` (after retries)
``num_judged_turns``     number of turns with a verdict
``judge_calls``          judge HTTP attempts made for this dialogue (0 for shared/cached verdicts)
``judge_retries``        failed attempts (retried or final) for this dialogue
``judge_failure_kinds``  those attempts by kind, a JSON object as a string (the trainer's failure
                         budget names them)
``am3_turn_scores``      ``dump_turn_scores(TurnScores(harmless, helpful, failed, refused))``, one
                         entry per record, in order: the per-turn contract the AM3 advantage reads
=======================  ==========================================================================

Every value but ``am3_turn_scores`` and ``judge_failure_kinds`` (JSON strings, which verl's metrics skip) is
a scalar. No score is ever ``-0.0`` (a judge answering ``-0`` gives ``0.0``): in the token-reward row ``-0.0`` marks a failed turn.

:func:`compute_single_turn_score` judges ``solution_str`` as the reply to the row's prompt, for
ordinary single-turn verl datasets, and returns ``score = harmless + helpful_weight * helpful``
(0.0 when the judge failed, with ``judge_failures = 1``) plus the same scalar metrics. Image parts
that name a file are read by :func:`am3_verl.clients.images.read_image_file`: a regular file of at most
:data:`~am3_verl.clients.images.MAX_IMAGE_FILE_BYTES` bytes (FIFOs, devices and folders are refused).
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from typing import Any, Mapping, Sequence

from am3_verl.judges.base import DialogueTurn, TurnJudgment, requests_from_turns, turns_from_records
from am3_verl.asr import UNSAFE_THRESHOLD, attack_success_rate
from am3_verl.judges.config import ENV, SECRET_FIELDS, JudgeConfig, get_judge, resolve_judge_config
from am3_verl.clients.images import content_image_bytes, sniff_mime
from am3_verl.turn_scores import TurnScores, dump_turn_scores

TURNS_KEY = "am3_turns"
"""``extra_info`` key holding the agent loop's per-turn records."""


_CONFIGS: dict[tuple, JudgeConfig] = {}
_MAX_CONFIGS = 64


def _judge_config(judge_kwargs: Mapping[str, Any]) -> JudgeConfig:
    """``resolve_judge_config(judge_kwargs)``, remembered for the same arguments and judge environment variables.

    verl calls the reward function once per rollout with the same ``reward_kwargs``; validating them again
    for each of thousands of concurrent calls was a measurable part of the time before the first judge
    request goes out. The memo is keyed on each argument's name, type and value and on the ``AM3_*``
    variables :func:`resolve_judge_config` reads (of the key variables, only whether they are set, which is
    all it reads of them), so a changed argument or variable resolves afresh; failures are never remembered.
    """
    try:
        key = (
            tuple((name, type(value), value) for name, value in sorted(judge_kwargs.items())),
            tuple(bool(os.environ.get(var)) if name in SECRET_FIELDS else os.environ.get(var) for name, var in ENV.items()),
        )
        config = _CONFIGS.get(key)
    except TypeError:  # an unhashable argument: resolved (and most likely refused) every time
        return resolve_judge_config(judge_kwargs)
    if config is None:
        config = resolve_judge_config(judge_kwargs)
        if len(_CONFIGS) >= _MAX_CONFIGS:
            _CONFIGS.clear()
        _CONFIGS[key] = config
    return config


def _plus_zero(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with every float ``-0.0`` turned into ``0.0`` (NaN and other values unchanged)."""
    return {key: value + 0.0 if isinstance(value, float) else value for key, value in values.items()}


def failed_attempt_kinds(judgments: Sequence[TurnJudgment]) -> Counter[str]:
    """Failed judge attempts by kind (``http_5xx``, ``connect``, ...) over ``judgments``, retried ones included;
    a failed turn that reports no attempts (a backend error) counts once as ``error``."""
    kinds: Counter[str] = Counter()
    for judgment in judgments:
        kinds.update(judgment.failures)
        if judgment.failed and not judgment.failures:
            kinds["error"] += 1
    return kinds


def summarise(judgments: Sequence[TurnJudgment], unsafe_threshold: float = UNSAFE_THRESHOLD) -> dict[str, Any]:
    """The reward dict (see the module docstring) for one dialogue's per-turn judgments, in order.

    No float in it is ``-0.0``."""
    judged = [j for j in judgments if not j.failed]
    n = len(judged)
    scores = TurnScores(
        harmless=[0.0 if j.failed else j.harmless for j in judgments],
        helpful=[0.0 if j.failed else j.helpful for j in judgments],
        failed=[j.failed for j in judgments],
        refused=[False if j.failed else bool(j.refused) for j in judgments],
    )
    nan = math.nan
    values = {
        "score": float(sum(j.harmless + j.helpful for j in judged)),
        "harmless": sum(j.harmless for j in judged) / n if n else nan,
        "helpful": sum(j.helpful for j in judged) / n if n else nan,
        "asr": attack_success_rate([j.harmless for j in judged], unsafe_threshold),
        "refusal_rate": sum(bool(j.refused) for j in judged) / n if n else nan,
        "judge_failures": len(judgments) - n,
        "num_judged_turns": n,
        "judge_calls": sum(j.calls for j in judgments),
        "judge_retries": sum(sum(j.failures.values()) for j in judgments),
        "judge_failure_kinds": json.dumps(dict(failed_attempt_kinds(judgments)), sort_keys=True),
        "am3_turn_scores": dump_turn_scores(scores),
    }
    return _plus_zero(values)


async def compute_score(
    data_source: Any = None,
    solution_str: str | None = None,
    ground_truth: Any = None,
    extra_info: Mapping[str, Any] | None = None,
    reward_router_address: Any = None,
    reward_model_tokenizer: Any = None,
    **judge_kwargs: Any,
) -> dict[str, Any]:
    """Judge every assistant turn of one dialogue rollout; returns the dict in the module docstring.

    ``extra_info[TURNS_KEY]`` must hold the agent loop's records; raises ``ValueError`` naming the
    record and field when one is malformed, or when the key is missing. ``solution_str``,
    ``ground_truth`` and verl's reward-model router arguments are accepted and unused: the per-turn
    replies come from the records. Other keyword arguments configure the judge.
    """
    if extra_info is None or TURNS_KEY not in extra_info:
        raise ValueError(
            f"extra_info has no {TURNS_KEY!r}: this reward function needs the am3 dialogue agent loop's per-turn "
            "records. For single-turn data use reward_fns/am3_single_turn.py (compute_single_turn_score)."
        )
    config = _judge_config(judge_kwargs)
    turns = turns_from_records(extra_info[TURNS_KEY], where=f"extra_info[{TURNS_KEY!r}]")
    judge = get_judge(config)
    judgments = await judge.judge_many(requests_from_turns(turns))
    return summarise(judgments, config.unsafe_threshold)


# ---------------------------------------------------------------------------------------- single turn
def _user_content(content: Any, where: str) -> tuple[str, list[bytes]]:
    if isinstance(content, str):
        return content, []
    if not isinstance(content, (list, tuple)):
        raise ValueError(f"{where}.content must be a string or a list of parts, got {type(content).__name__}")
    text, images = [], []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, Mapping) else None
        if kind == "text":
            text.append(part.get("text", ""))
        elif kind in ("image", "image_url"):
            data = content_image_bytes(part, f"{where}.content[{j}]")
            try:
                sniff_mime(data)
            except ValueError as exc:
                raise ValueError(f"{where}.content[{j}]: {exc}") from None
            images.append(data)
            text.append("<image>")
        else:
            raise ValueError(f"{where}.content[{j}] has unsupported type {kind!r} (text and image parts only)")
    return "".join(text), images


def dialogue_from_prompt(messages: Sequence[Mapping[str, Any]], reply: str) -> list[DialogueTurn]:
    """Turn a verl ``raw_prompt`` (chat messages; images as content parts) plus ``reply`` into exchanges.

    System messages are not shown to the judge; consecutive user messages are joined; the last
    message must be a user message (the one ``reply`` answers).
    """
    turns: list[DialogueTurn] = []
    pending_text: list[str] = []
    pending_images: list[bytes] = []
    for i, message in enumerate(messages):
        where = f"raw_prompt[{i}]"
        role = message.get("role") if isinstance(message, Mapping) else None
        if role == "system":
            continue
        if role == "user":
            text, images = _user_content(message.get("content"), where)
            pending_text.append(text)
            pending_images.extend(images)
        elif role == "assistant":
            if not pending_text:
                raise ValueError(f"{where}: an assistant message with no user message before it")
            answer, _ = _user_content(message.get("content"), where)
            turns.append(DialogueTurn("\n".join(pending_text), tuple(pending_images), answer))
            pending_text, pending_images = [], []
        else:
            raise ValueError(f"{where}.role = {role!r}; expected system, user or assistant")
    if not pending_text:
        raise ValueError("raw_prompt does not end with a user message for the reply to answer")
    turns.append(DialogueTurn("\n".join(pending_text), tuple(pending_images), reply))
    return turns


async def compute_single_turn_score(
    data_source: Any = None,
    solution_str: str | None = None,
    ground_truth: Any = None,
    extra_info: Mapping[str, Any] | None = None,
    reward_router_address: Any = None,
    reward_model_tokenizer: Any = None,
    helpful_weight: float = 1.0,
    **judge_kwargs: Any,
) -> dict[str, Any]:
    """Judge ``solution_str`` as the reply to the row's prompt; ``score = harmless + helpful_weight * helpful``.

    The prompt is ``extra_info["raw_prompt"]`` (chat messages; present under verl's agent-loop
    rollout), else the text ``extra_info["question"]`` or ``extra_info["prompt"]``. Raises
    ``ValueError`` when none is there or ``solution_str`` is missing, or naming the message and part
    (``raw_prompt[i].content[j]``) of an image that cannot be read. No returned score is ``-0.0``.
    """
    if not isinstance(solution_str, str):
        raise ValueError(f"solution_str must be the decoded response text, got {type(solution_str).__name__}")
    info = extra_info or {}
    if info.get("raw_prompt") is not None:
        turns = dialogue_from_prompt(list(info["raw_prompt"]), solution_str)
    else:
        question = info.get("question", info.get("prompt"))
        if not isinstance(question, str):
            raise ValueError(
                "single-turn judging needs the prompt: extra_info['raw_prompt'] (verl agent-loop rollouts) or a text "
                "extra_info['question'] / extra_info['prompt'] (add it in your data preprocessing)"
            )
        turns = [DialogueTurn(question.replace("<image>", "[image]"), (), solution_str)]
    config = _judge_config(judge_kwargs)
    judge = get_judge(config)
    (judgment,) = await judge.judge_many(requests_from_turns(turns)[-1:])
    result = summarise([judgment], config.unsafe_threshold)
    del result["am3_turn_scores"]
    result["score"] = 0.0 if judgment.failed else float(judgment.harmless + float(helpful_weight) * judgment.helpful) + 0.0
    return result
