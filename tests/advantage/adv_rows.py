"""Batches for the advantage tests: synthetic token rows, and dialogue agent-loop outputs with real tokens.

Rows follow what the dialogue environment produces: the response starts with the first reply, user
turns (mask 0) sit between replies, one mask-0 slot token follows the final reply, then right padding.
Scores are written with the contract's own encoder (:func:`am3_verl.turn_scores.encode_row`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch
from verl.experimental.agent_loop.agent_loop import AgentLoopMetrics

from am3_verl.env.output import DialogueAgentLoopOutput
from am3_verl.turn_scores import EXTRA_INFO_KEY, TurnScores, dump_turn_scores, encode_row


@dataclass
class SyntheticBatch:
    token_level_rewards: torch.Tensor
    response_mask: torch.Tensor
    index: np.ndarray
    records: list[TurnScores]


def random_scores(rng: random.Random, turns: int, p_fail: float, levels: int | None = None) -> TurnScores:
    """Random per-turn scores; ``levels`` quantises them (to make ties and equal scores likely)."""

    def draw() -> float:
        return rng.randrange(levels + 1) / levels if levels else rng.random()

    failed = [rng.random() < p_fail for _ in range(turns)]
    return TurnScores(
        harmless=[draw() for _ in range(turns)],
        helpful=[draw() for _ in range(turns)],
        failed=failed,
        refused=[rng.random() < 0.3 for _ in range(turns)],
    )


def random_mask(rng: random.Random, turns: int, max_turn_len: int, max_gap: int) -> list[int]:
    """A response mask with ``turns`` policy runs (lengths 1..max_turn_len), user gaps, and the slot."""
    mask: list[int] = []
    for t in range(turns):
        if t > 0:
            mask += [0] * rng.randint(1, max_gap)
        mask += [1] * rng.randint(1, max_turn_len)
    return mask + [0]


def synthetic_batch(
    seed: int,
    num_groups: int = 4,
    group_size: int = 8,
    max_turns: int = 4,
    p_truncate: float = 0.3,
    p_fail: float = 0.15,
    max_turn_len: int = 6,
    max_gap: int = 4,
    levels: int | None = None,
    group_sizes: list[int] | None = None,
    shuffle: bool = True,
) -> SyntheticBatch:
    """Random groups of rollouts; some dialogues truncated (fewer turns), some turns judge-failed."""
    rng = random.Random(seed)
    sizes = group_sizes or [group_size] * num_groups
    rows, labels, records = [], [], []
    for g, size in enumerate(sizes):
        for _ in range(size):
            turns = max_turns if rng.random() >= p_truncate else rng.randint(0, max_turns)
            scores = random_scores(rng, turns, p_fail, levels)
            mask = random_mask(rng, turns, max_turn_len, max_gap) if turns else [0] * rng.randint(1, 3)
            rows.append((mask, scores))
            labels.append(f"uid-{seed}-{g}")
            records.append(scores)
    order = list(range(len(rows)))
    if shuffle:
        rng.shuffle(order)
    length = max(len(m) for m, _ in rows) + rng.randint(0, 3)
    mask_t = torch.zeros(len(rows), length, dtype=torch.int64)
    rewards_t = torch.zeros(len(rows), length, dtype=torch.float32)
    for out, i in enumerate(order):
        mask, scores = rows[i]
        mask_t[out, : len(mask)] = torch.tensor(mask)
        rewards_t[out] = encode_row(mask, scores, length=length)
    return SyntheticBatch(
        token_level_rewards=rewards_t,
        response_mask=mask_t,
        index=np.array([labels[i] for i in order], dtype=object),
        records=[records[i] for i in order],
    )


USER_TEXTS = [
    "What does the sign in <image> say?",
    "Which chemicals are stored on that shelf?",
    "How would someone mix them at home?",
    "And what amounts would make it stronger?",
    "Thanks. Summarise what we discussed.",
]
REPLY_TEXTS = [
    "The sign says the room holds cleaning supplies.",
    "I can see bleach and an ammonia-based cleaner.",
    "I'm sorry, but mixing those releases toxic chloramine gas; please don't.",
    "I can't help with that.",
    "",
]


def dialogue_output(tokenizer, rng: random.Random, scores: TurnScores | None, turns: int, image_tokens: int = 4) -> DialogueAgentLoopOutput:
    """A :class:`DialogueAgentLoopOutput` as the dialogue environment builds it, with real Qwen tokens.

    Replies end with ``<|im_end|>`` (mask 1); an empty reply is a one-token turn. Later user turns are
    chat-template text with image-pad tokens (mask 0); the final slot is the pad token (mask 0). The
    reward function's result sits in ``extra_fields["reward_extra_info"]`` as verl's reward loop stores it.
    """
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    image_pad = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    vision = (
        [tokenizer.convert_tokens_to_ids("<|vision_start|>")]
        + [image_pad] * image_tokens
        + [tokenizer.convert_tokens_to_ids("<|vision_end|>")]
    )
    prompt_ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": USER_TEXTS[0].replace("<image>", "")}], add_generation_prompt=True, tokenize=True
    )
    prompt_ids = list(prompt_ids["input_ids"] if hasattr(prompt_ids, "keys") else prompt_ids)
    response_ids: list[int] = []
    response_mask: list[int] = []
    for t in range(turns):
        if t > 0:
            user = tokenizer.encode(f"\n<|im_start|>user\n{USER_TEXTS[t % len(USER_TEXTS)]}")
            if t % 2 == 1:
                user += vision
            user += [im_end] + tokenizer.encode("\n<|im_start|>assistant\n")
            response_ids += user
            response_mask += [0] * len(user)
        text = REPLY_TEXTS[rng.randrange(len(REPLY_TEXTS))]
        reply = (tokenizer.encode(text) if text else []) + [im_end]
        response_ids += reply
        response_mask += [1] * len(reply)
    response_ids.append(tokenizer.pad_token_id)
    response_mask.append(0)
    reward_extra_info = {}
    reward_score = None
    if scores is not None:
        reward_extra_info = {EXTRA_INFO_KEY: dump_turn_scores(scores)}
        reward_score = sum(s + h for s, h, f in zip(scores.harmless, scores.helpful, scores.failed) if not f)
    return DialogueAgentLoopOutput(
        prompt_ids=prompt_ids,
        response_ids=response_ids,
        response_mask=response_mask,
        response_logprobs=[-0.5] * len(response_ids),
        reward_score=reward_score,
        num_turns=2 * turns + 1,
        metrics=AgentLoopMetrics(),
        extra_fields={
            "min_global_steps": 0,
            "max_global_steps": 0,
            "turn_scores": [],
            "tool_rewards": [],
            "reward_extra_info": reward_extra_info,
        },
    )


def dialogue_outputs(tokenizer, seed: int, group_sizes: list[int], max_turns: int = 4, p_truncate: float = 0.3, p_fail: float = 0.15):
    """``[(uid, session_id, output)]`` for groups of the given sizes (truncated dialogues, failed judges)."""
    rng = random.Random(seed)
    outputs = []
    for g, size in enumerate(group_sizes):
        for session in range(size):
            turns = max_turns if rng.random() >= p_truncate else rng.randint(1, max_turns)
            scores = random_scores(rng, turns, p_fail)
            outputs.append((f"uid{seed}x{g}", session, dialogue_output(tokenizer, rng, scores, turns)))
    return outputs
