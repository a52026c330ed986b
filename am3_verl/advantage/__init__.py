"""The turn-aware dual-objective advantage (docs/method.md eqs. 6-9) as verl's ``am3_grpo`` estimator.

* :mod:`.config` - the ``algorithm.am3`` settings and how they are read from verl's config;
* :mod:`.groups` - prompt groups and GRPO's group normalisation;
* :mod:`.weights` - per-turn group statistics and the turn weights alpha (eqs. 6-8);
* :mod:`.variants` - the rollout reward (eq. 9) and its variants;
* :mod:`.estimator` - the registered estimator (decode, compute, spread over tokens);
* :mod:`.metrics` - training-time metrics from a batch;
* :mod:`.trainer_modes` - the V1 trainer modes (``am3_sync``, ...) that log those metrics every step.

Call :func:`register` (the verl plugin does) to make ``algorithm.adv_estimator=am3_grpo`` and the
``trainer.v1.trainer_mode=am3_*`` modes available. Full user documentation: docs/advantage.md.
"""

from __future__ import annotations

from am3_verl.advantage.config import Am3AdvantageConfig, resolve_am3_config
from am3_verl.advantage.estimator import ESTIMATOR_NAME, compute_am3_grpo_advantage

__all__ = [
    "Am3AdvantageConfig",
    "ESTIMATOR_NAME",
    "compute_am3_grpo_advantage",
    "missing_registrations",
    "register",
    "resolve_am3_config",
]


def register() -> None:
    """Register ``am3_grpo`` with verl's advantage-estimator registry and the ``am3_*`` V1 trainer modes.

    Idempotent: verl's registries accept the same function or class twice. Raises ``ValueError`` (from
    verl) if another object already holds one of the names.
    """
    from verl.trainer.ppo.core_algos import register_adv_est

    from am3_verl.advantage import trainer_modes

    register_adv_est(ESTIMATOR_NAME)(compute_am3_grpo_advantage)
    trainer_modes.register()


def missing_registrations() -> list[str]:
    """Names of this package's extensions that verl's registries do not hold (empty when all are there)."""
    from verl.trainer.ppo.core_algos import ADV_ESTIMATOR_REGISTRY

    from am3_verl.advantage import trainer_modes

    missing = (
        [] if ADV_ESTIMATOR_REGISTRY.get(ESTIMATOR_NAME) is compute_am3_grpo_advantage else [f"advantage estimator {ESTIMATOR_NAME!r}"]
    )
    return missing + trainer_modes.missing_registrations()
