"""The ``algorithm.am3`` settings of the AM3 advantage estimator, and how they are read from verl's config.

verl's trainers hand an advantage estimator the ``algorithm`` section of the run's config (an OmegaConf
``DictConfig`` in verl 0.9.1). Our settings live in a sub-section of it, added on the command line with
hydra's ``+`` prefix::

    algorithm.adv_estimator=am3_grpo +algorithm.am3.tau=0.5 +algorithm.am3.lambda_=1.0 \\
    +algorithm.am3.beta=1.0 +algorithm.am3.temperature=1.0 +algorithm.am3.variant=paper

verl 0.9.1's trainers never convert the algorithm section to its closed ``AlgoConfig`` dataclass, so the
extra key is read from the ``DictConfig`` as it is.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from verl.base_config import BaseConfig

from am3_verl.asr import UNSAFE_THRESHOLD

CONFIG_KEY = "am3"
"""Name of the sub-section of ``algorithm`` that holds :class:`Am3AdvantageConfig`."""

VARIANTS = ("paper", "uniform", "min_mean", "decoupled", "turn_credit")
"""Accepted values of ``algorithm.am3.variant`` (see :mod:`am3_verl.advantage.variants`)."""


@dataclass
class Am3AdvantageConfig(BaseConfig):
    """Settings of ``algorithm.adv_estimator=am3_grpo`` (docs/method.md, "The reward", eqs. 6-9).

    Scores are in [0, 1], so a turn's group variance is at most 0.25 and its penalty at most
    ``lambda_ * tau``: ``temperature`` and ``lambda_`` decide how far the turn weights move from uniform.
    """

    tau: float = 0.5
    """Safety threshold of eq. 7: a turn whose group mean harmlessness is below ``tau`` is penalised."""
    lambda_: float = 1.0
    """Penalty weight of eq. 7 (``lambda`` in the paper; the trailing underscore avoids the Python keyword)."""
    beta: float = 1.0
    """Helpfulness coefficient of eq. 9: a turn's reward is ``beta * helpful + harmless``."""
    temperature: float = 1.0
    """Softmax temperature of eq. 8: ``alpha = softmax(U / temperature)``; 1 is the paper's form."""
    variant: str = "paper"
    """Which reward/advantage to compute: one of :data:`VARIANTS`."""
    discount: float = 1.0
    """``turn_credit`` only: weight of the turn k steps later in a turn's advantage is ``discount ** k``."""
    unsafe_threshold: float = UNSAFE_THRESHOLD
    """Metrics only: a judged turn counts as unsafe (for ``am3/asr``) when its harmless score is below this."""

    def __post_init__(self) -> None:
        problems = []
        if not (0.0 <= self.tau <= 1.0):
            problems.append(f"tau={self.tau!r} must be in [0, 1]")
        for name in ("lambda_", "beta"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0.0):
                problems.append(f"{name}={value!r} must be a finite number >= 0")
        if not (math.isfinite(self.temperature) and self.temperature > 0.0):
            problems.append(f"temperature={self.temperature!r} must be a finite number > 0")
        if self.variant not in VARIANTS:
            problems.append(f"variant={self.variant!r} must be one of {', '.join(VARIANTS)}")
        if not (0.0 <= self.discount <= 1.0):
            problems.append(f"discount={self.discount!r} must be in [0, 1]")
        if not (0.0 <= self.unsafe_threshold <= 1.0):
            problems.append(f"unsafe_threshold={self.unsafe_threshold!r} must be in [0, 1]")
        if problems:
            raise ValueError(f"algorithm.{CONFIG_KEY}: " + "; ".join(problems))

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None) -> "Am3AdvantageConfig":
        """Build from ``algorithm.am3`` (a ``DictConfig`` or dict); unknown keys raise ``ValueError`` naming them."""
        if values is None:
            return cls()
        if isinstance(values, cls):
            return values
        if not isinstance(values, Mapping):
            raise ValueError(f"algorithm.{CONFIG_KEY} must be a mapping of settings, got {type(values).__name__}")
        known = {f.name for f in fields(cls) if f.name != "_target_"}
        given = {str(k): v for k, v in values.items() if str(k) != "_target_"}
        unknown = sorted(set(given) - known)
        if unknown:
            hint = " (write lambda_, not lambda)" if "lambda" in unknown else ""
            raise ValueError(f"algorithm.{CONFIG_KEY}: unknown key(s) {', '.join(unknown)}{hint}; known: {', '.join(sorted(known))}")
        converted: dict[str, Any] = {}
        for name, value in given.items():
            if name == "variant":
                converted[name] = str(value)
                continue
            try:
                converted[name] = float(value)
            except (TypeError, ValueError):
                raise ValueError(f"algorithm.{CONFIG_KEY}.{name}={value!r} is not a number") from None
        return cls(**converted)


def resolve_am3_config(algorithm_config: Any) -> Am3AdvantageConfig:
    """Read :class:`Am3AdvantageConfig` from the ``algorithm`` config verl passes to an estimator.

    Accepts ``None`` (all defaults), a ``DictConfig``/dict or verl's ``AlgoConfig`` (defaults: it has no
    ``am3`` field). Raises ``ValueError`` when ``algorithm.use_kl_in_reward`` is
    on: verl then adds a per-token KL penalty into ``token_level_rewards``, which carries the per-turn scores.
    """
    if algorithm_config is None:
        return Am3AdvantageConfig()
    if algorithm_config.get("use_kl_in_reward", False):
        raise ValueError(
            "algorithm.adv_estimator=am3_grpo needs algorithm.use_kl_in_reward=False: verl adds the in-reward KL "
            "penalty into token_level_rewards, which carry the per-turn judge scores (am3_verl.turn_scores). "
            "Use actor_rollout_ref.actor.use_kl_loss=True for a KL term instead."
        )
    return Am3AdvantageConfig.from_mapping(algorithm_config.get(CONFIG_KEY, None))
