"""The ``hf_sync_once`` adapter (see sync_once_hf.py): sends the first weight update, drains the rest."""

from am3_verl.hf_rollout.adapter import HFServerAdapter


class SyncOnceHFServerAdapter(HFServerAdapter):
    """Delivers the first weight update; later ones are consumed and not sent."""

    _delivered = False

    async def update_weights(self, weights, global_steps=None, wire_format="named_tensors", **kwargs):
        if not self._delivered:
            self._delivered = True
            return await super().update_weights(weights, global_steps=global_steps, wire_format=wire_format, **kwargs)
        for _ in weights:
            pass
