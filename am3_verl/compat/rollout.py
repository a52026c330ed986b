"""verl 0.9.1's rollout adapter registry, which has no register function."""

from __future__ import annotations


def register_rollout_adapter(name: str, target: str, mode: str = "async") -> None:
    """Name the ``BaseRollout`` adapter class (dotted path) verl's actor workers build for ``rollout.name=name``.

    verl 0.9.1 looks adapters up in the private dict ``_ROLLOUT_REGISTRY`` (workers/rollout/base.py:89,
    read at workers/engine_workers.py:667) and has no function to add one. An existing entry for the
    same key with another target is an error, never overwritten.
    """
    from verl.workers.rollout import base

    existing = base._ROLLOUT_REGISTRY.get((name, mode))
    if existing not in (None, target):
        raise ValueError(f"verl's rollout adapter registry already maps {(name, mode)!r} to {existing!r}")
    base._ROLLOUT_REGISTRY[(name, mode)] = target
