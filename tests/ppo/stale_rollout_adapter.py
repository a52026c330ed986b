"""The ``hf_stale`` adapter (see stale_rollout.py): consumes the weights and never sends them."""

from am3_verl.hf_rollout.adapter import HFServerAdapter


class StaleHFServerAdapter(HFServerAdapter):
    """Drains verl's weight generator and keeps the rollout model at its initial weights."""

    async def update_weights(self, weights, global_steps=None, wire_format="named_tensors", **kwargs):
        for _ in weights:
            pass
