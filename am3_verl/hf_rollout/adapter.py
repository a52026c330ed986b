"""``HFServerAdapter``: the rollout object verl builds inside each training worker for ``rollout.name=hf``.

verl's naive weight sync (the only one its sync trainer uses) calls, on every training rank,
``rollout.resume(tags)``, ``rollout.update_weights(weights, ...)`` and ``rollout.release()``. Every rank
walks the weight generator (under FSDP each full tensor is an all-gather every rank must join); the
leader rank of each replica copies the full tensors to host memory and sends them to its
:class:`~am3_verl.hf_rollout.server.HFRolloutServer` through Ray's object store in one call.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import ray
import torch
from verl.workers.rollout.base import BaseRollout

from am3_verl.hf_rollout.server import server_actor_name

logger = logging.getLogger(__name__)


class HFServerAdapter(BaseRollout):
    """verl ``BaseRollout`` that forwards the actor's weights to the ``hf`` rollout server of its replica."""

    def __init__(self, config, model_config, device_mesh, replica_rank: int = -1, **kwargs: Any):
        super().__init__(config, model_config, device_mesh)
        rank = int(os.environ.get("RANK", 0))
        rollout_world_size = (
            self.config.tensor_model_parallel_size * self.config.data_parallel_size * self.config.pipeline_model_parallel_size
        )
        self.replica_rank = rank // rollout_world_size if replica_rank == -1 else replica_rank
        self.is_leader = rank % rollout_world_size == 0
        self._server = None

    @property
    def server(self):
        """The replica's server actor (looked up by name on first use: it starts after the workers)."""
        if self._server is None:
            self._server = ray.get_actor(server_actor_name(self.replica_rank))
        return self._server

    async def resume(self, tags: list[str]) -> None:
        """Nothing to restore: the server keeps its weights and has no paged KV cache."""

    async def release(self) -> None:
        """Nothing to free (see :meth:`resume`)."""

    @torch.no_grad()
    async def update_weights(self, weights, global_steps: int | None = None, wire_format: str = "named_tensors", **kwargs: Any) -> None:
        """Send the full weights from ``weights`` (``(name, tensor)`` pairs) to the server; leader rank only."""
        if wire_format != "named_tensors":
            raise NotImplementedError(f"the hf rollout backend takes full weights (wire_format='named_tensors'), got {wire_format!r}")
        if kwargs.get("peft_config") is not None:
            raise NotImplementedError("the hf rollout backend needs merged weights: set actor_rollout_ref.model.lora.merge=True for LoRA")
        start = time.perf_counter()
        state: dict[str, torch.Tensor] = {}
        if hasattr(weights, "__aiter__"):
            async for name, tensor in weights:
                if self.is_leader:
                    state[name] = tensor.detach().to("cpu", copy=True)
        else:
            for name, tensor in weights:
                if self.is_leader:
                    state[name] = tensor.detach().to("cpu", copy=True)
        if self.is_leader:
            await self.server.update_weights.remote(ray.put(state), global_steps)
            logger.info("hf rollout: %d tensors synced to replica %d in %.2fs", len(state), self.replica_rank, time.perf_counter() - start)
