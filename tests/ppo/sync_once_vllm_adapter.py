"""The adapter of sync_once_vllm.py: verl's vLLM ``ServerAdapter`` that sends the first update and drains the rest."""

from verl.workers.rollout.vllm_rollout import ServerAdapter


class SyncOnceServerAdapter(ServerAdapter):
    """Delivers the first weight update (the checkpoint the run starts from); later ones are drained, not sent."""

    _delivered = False

    async def update_weights(self, weights, global_steps=None, wire_format="named_tensors", **kwargs):
        if not self._delivered:
            self._delivered = True
            return await super().update_weights(weights, global_steps=global_steps, wire_format=wire_format, **kwargs)
        # Every rank must still walk the generator (under FSDP each full tensor is a collective).
        if hasattr(weights, "__aiter__"):
            async for _ in weights:
                pass
        else:
            for _ in weights:
                pass
