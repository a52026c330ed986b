"""Negative control for the weight-sync test: rollout backend ``hf_stale`` never updates its weights.

It is the ``hf`` backend with an adapter that drains verl's weight generator (every rank must) and
sends nothing, so the rollout model stays at the initial checkpoint. Imported in every verl process
through ``VERL_USE_EXTERNAL_MODULES=stale_rollout`` (with this folder on ``PYTHONPATH``), during
``import verl``: everything heavier than the registries is imported lazily.
"""

from verl.workers.rollout.replica import RolloutReplicaRegistry

from am3_verl import compat


def _load_replica():
    from am3_verl.hf_rollout.replica import HFReplica

    return HFReplica


RolloutReplicaRegistry.register("hf_stale", _load_replica)
compat.register_rollout_adapter("hf_stale", "stale_rollout_adapter.StaleHFServerAdapter")
