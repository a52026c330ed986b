"""Negative control for the weight-sync test: rollout backend ``hf_stale`` never updates its weights.

It is the ``hf`` backend with an adapter that drains verl's weight generator (every rank must) and
sends nothing, so the rollout model stays at the initial checkpoint. Imported in every verl process
through ``VERL_USE_EXTERNAL_MODULES=stale_rollout`` (with this folder on ``PYTHONPATH``).
"""

from verl.workers.rollout.replica import RolloutReplicaRegistry

from am3_verl import compat
from am3_verl.hf_rollout.adapter import HFServerAdapter
from am3_verl.hf_rollout.replica import HFReplica


class StaleHFServerAdapter(HFServerAdapter):
    """Consumes the weights and never sends them."""

    async def update_weights(self, weights, global_steps=None, wire_format="named_tensors", **kwargs):
        for _ in weights:
            pass


RolloutReplicaRegistry.register("hf_stale", lambda: HFReplica)
compat.register_rollout_adapter("hf_stale", f"{__name__}.StaleHFServerAdapter")
