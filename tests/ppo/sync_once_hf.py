"""Negative control for the weight-sync check: rollout backend ``hf_sync_once`` delivers only the first weight update.

It is the ``hf`` backend with an adapter that sends the first update (the weights the run starts from,
e.g. a restored checkpoint) and then drains verl's weight generator (every rank must) without sending,
so the rollout model stays at those weights. Imported in every verl process through
``VERL_USE_EXTERNAL_MODULES=sync_once_hf`` (with this folder on ``PYTHONPATH``), during ``import verl``:
everything heavier than the registries is imported lazily.
"""

from verl.workers.rollout.replica import RolloutReplicaRegistry

from am3_verl import compat


def _load_replica():
    from am3_verl.hf_rollout.replica import HFReplica

    return HFReplica


RolloutReplicaRegistry.register("hf_sync_once", _load_replica)
compat.register_rollout_adapter("hf_sync_once", "sync_once_hf_adapter.SyncOnceHFServerAdapter")
