"""``HFReplica``: verl's ``RolloutReplica`` for ``actor_rollout_ref.rollout.name=hf``.

``launch_servers`` starts one :class:`~am3_verl.hf_rollout.server.HFRolloutServer` Ray actor per replica,
on the node of the replica's first training worker, under the name the
:class:`~am3_verl.hf_rollout.adapter.HFServerAdapter` looks up. Everything else (sleep, wake-up,
kv-cache, abort, profile fan-out) is verl's ``RolloutReplica`` unchanged.
"""

from __future__ import annotations

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from verl.workers.rollout.replica import RolloutReplica

from am3_verl.hf_rollout.server import HFRolloutServer, server_actor_name


class HFReplica(RolloutReplica):
    """A rollout replica served by one Hugging Face generation actor (see :mod:`am3_verl.hf_rollout`)."""

    async def launch_servers(self) -> None:
        """Start this replica's server actor and publish its handle and name as verl's server address."""
        from verl.plugin.platform import get_platform
        from verl.utils.device import get_device_name

        if self.world_size != 1:
            raise ValueError(
                "the hf rollout backend runs one unsharded model per replica: set "
                "actor_rollout_ref.rollout.tensor_model_parallel_size=1 (and data/pipeline parallel sizes 1), "
                f"got a rollout world size of {self.world_size}"
            )
        if self.is_reward_model or self.is_teacher_model:
            raise NotImplementedError("the hf rollout backend serves the policy only (no reward or teacher model)")

        device = get_device_name()
        options: dict = {"name": server_actor_name(self.replica_rank), "max_concurrency": self.max_concurrency, "num_cpus": 0}
        if self.workers:
            node_id, accelerators = await self.workers[0].__ray_call__.remote(
                lambda worker: (ray.get_runtime_context().get_node_id(), ray.get_runtime_context().get_accelerator_ids())
            )
            options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node_id=node_id, soft=False)
            platform = get_platform()
            if device != "cpu":
                # Share the first training worker's accelerator, as verl's vLLM server does.
                visible = accelerators.get(platform.ray_resource_name(), [])
                env = {var: "1" for var in platform.ray_noset_envvars()}
                if visible:
                    env[platform.visible_devices_envvar()] = str(visible[0])
                options["runtime_env"] = {"env_vars": env}

        server = (
            ray.remote(HFRolloutServer)
            .options(**options)
            .remote(
                model_path=self.model_config.path,
                response_length=self.config.response_length,
                seed=self.config.seed + self.replica_rank,
                max_batch_size=self.config.max_num_seqs,
            )
        )
        await server.get_stats.remote()  # surfaces a load failure here, not at the first generate
        self.servers = [server]
        self._server_handle = server
        self._server_address = server_actor_name(self.replica_rank)


def load_replica_class() -> type[HFReplica]:
    """Loader for verl's ``RolloutReplicaRegistry``."""
    return HFReplica
