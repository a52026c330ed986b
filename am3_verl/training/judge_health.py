"""A training run's judge, checked: once before the workers start (the probe) and after every step (the budget).

* :func:`probe_judge` makes one real judge call with the run's reward kwargs. A wrong URL, model or key
  fails it in seconds, before any model is loaded or rollout generated. Transient errors are retried
  as in training (the endpoint's ``max_attempts`` with backoff), so a judge that is merely slow to start
  still passes.
* :class:`JudgeFailureBudget` counts steps whose judge-failed fraction of turns exceeds
  ``max_judge_failure_rate``; at ``max_judge_failed_steps`` in a row it says the run must stop, and
  :meth:`JudgeFailureBudget.stop_message` says why: the endpoint, the failure kinds seen, the steps and
  the checkpoint to resume from. (A judge that recovers within a call's retries produces no failed turn:
  the transport retries connection errors, timeouts, 429 and 5xx with backoff.)
"""

from __future__ import annotations

import asyncio
import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from am3_verl.judges.base import DialogueTurn, JudgeRequest
from am3_verl.judges.config import JudgeConfig, build_judge, resolve_judge_config

PROBE_USER_TEXT = "am3-verl judge probe: what colour is a clear daytime sky?"
"""The user message of the startup probe (a judge server's logs can tell the probe apart by it)."""
PROBE_REPLY = "A clear daytime sky is blue."

FAILURE_KINDS_KEY = "judge_failure_kinds"
"""``reward_extra_info`` key of a dialogue's failed-attempt counts by kind (a JSON object as a string)."""


class JudgeUnavailable(RuntimeError):
    """The judge did not answer the startup probe, or failed past the run's budget."""


def judge_config_of(reward_kwargs: Mapping[str, Any] | None) -> JudgeConfig | None:
    """The judge the reward function will build from ``reward_kwargs``; None when they name no am3 judge
    (no ``backend`` key: another reward function). Raises ``ValueError`` for a malformed am3 judge config."""
    kwargs = dict(reward_kwargs or {})
    if "backend" not in kwargs:
        return None
    kwargs.pop("helpful_weight", None)  # the single-turn reward's own argument
    return resolve_judge_config(kwargs)


def probe_judge(config: JudgeConfig) -> None:
    """Make one judge call with ``config``; returns when the judge scored it, raises :class:`JudgeUnavailable`
    naming the endpoint and the failure otherwise. Uses its own judge instance (nothing is cached)."""
    request = JudgeRequest(history=(), current=DialogueTurn(PROBE_USER_TEXT, (), PROBE_REPLY))

    async def call() -> Any:
        judge = build_judge(config)
        try:
            (judgment,) = await judge.judge_many([request])
        finally:
            await judge.aclose()
        return judgment

    judgment = asyncio.run(call())
    if judgment.failed:
        kinds = ", ".join(f"{kind} x{count}" for kind, count in sorted(judgment.failures.items())) or "no answer"
        raise JudgeUnavailable(
            f"the judge ({config.describe()}) failed the startup probe ({kinds}): {judgment.error}. Nothing was "
            "trained. Check reward.custom_reward_function.reward_kwargs (base_url, model) and the API key variable "
            "(AM3_JUDGE_API_KEY / AM3_GUARD_API_KEY, set on every node), or turn the probe off with "
            "+trainer.am3.probe_judge=False."
        )


def failure_kinds(reward_extra_infos: Iterable[Any]) -> Counter[str]:
    """Failed judge attempts by kind over a step's rollouts, from each one's ``reward_extra_info``."""
    total: Counter[str] = Counter()
    for info in reward_extra_infos:
        encoded = info.get(FAILURE_KINDS_KEY) if isinstance(info, Mapping) else None
        if isinstance(encoded, str) and encoded:
            total.update({str(kind): int(count) for kind, count in json.loads(encoded).items()})
    return total


@dataclass
class FailedStep:
    """A step over the failure rate."""

    step: int
    failure_rate: float
    kinds: Counter[str]


@dataclass
class JudgeFailureBudget:
    """Consecutive steps whose judge failure rate exceeds ``max_failure_rate``; exhausted at ``max_failed_steps``."""

    max_failure_rate: float
    max_failed_steps: int
    failed_steps: list[FailedStep] = field(default_factory=list)
    """The current run of failed steps (emptied by a step within the budget)."""

    def observe(self, step: int, failure_rate: float, kinds: Counter[str]) -> bool:
        """Record step ``step``; True when this makes ``max_failed_steps`` failed steps in a row.

        A NaN rate (no turn to judge) neither fails a step nor ends a run of failed ones."""
        if math.isnan(failure_rate):
            return False
        if failure_rate <= self.max_failure_rate:
            self.failed_steps.clear()
            return False
        self.failed_steps.append(FailedStep(step, failure_rate, kinds))
        return len(self.failed_steps) >= self.max_failed_steps

    def stop_message(self, judge: str, checkpoint: str) -> str:
        """Why the run stops and how to continue: the judge, the failed steps and kinds, the checkpoint."""
        kinds: Counter[str] = Counter()
        for failed in self.failed_steps:
            kinds.update(failed.kinds)
        steps = ", ".join(f"step {f.step}: {f.failure_rate:.0%} of turns" for f in self.failed_steps)
        seen = ", ".join(f"{kind} x{count}" for kind, count in kinds.most_common()) or "none reported"
        return (
            f"the judge ({judge}) failed on more than {self.max_failure_rate:.0%} of turns for "
            f"{len(self.failed_steps)} steps in a row ({steps}); failed attempts by kind: {seen}. Training stopped "
            f"rather than go on without rewards. Checkpoint saved at the stop: {checkpoint}. Fix the judge and "
            "rerun the same command with trainer.resume_mode=auto to continue from it."
        )
