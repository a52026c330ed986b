"""The ``hf`` rollout backend: verl's ``main_ppo`` with Hugging Face generation instead of vLLM/SGLang.

``actor_rollout_ref.rollout.name=hf`` makes verl 0.9.1 start, per rollout replica, one
:class:`~.server.HFRolloutServer` Ray actor (:class:`~.replica.HFReplica`) that answers the agent loops'
``generate`` calls with ``transformers``' ``generate`` on verl's current device, and build in each
training worker an :class:`~.adapter.HFServerAdapter` through which verl's weight sync delivers the
actor's weights to the server every step. It exists so that the whole training loop runs on machines
without vLLM: CPU laptops and CI (with ``VERL_PLATFORM=cpu``), or a CUDA box for debugging. It is slow
by design (no paged attention, no continuous batching); train real models with ``rollout.name=vllm``.

:func:`register` (called by the plugin) registers the replica through verl's public
``RolloutReplicaRegistry`` and the adapter through :mod:`am3_verl.compat`.
"""

from __future__ import annotations

ROLLOUT_NAME = "hf"
ADAPTER_TARGET = "am3_verl.hf_rollout.adapter.HFServerAdapter"


def _load_replica():
    from am3_verl.hf_rollout.replica import HFReplica

    return HFReplica


def register() -> None:
    """Make ``actor_rollout_ref.rollout.name=hf`` resolvable by verl in this process (idempotent)."""
    from verl.workers.rollout.replica import RolloutReplicaRegistry

    from am3_verl import compat

    RolloutReplicaRegistry.register(ROLLOUT_NAME, _load_replica)
    compat.register_rollout_adapter(ROLLOUT_NAME, ADAPTER_TARGET)


def is_registered() -> bool:
    """Whether verl resolves the ``hf`` replica and adapter in this process."""
    from verl.workers.rollout.base import get_rollout_class
    from verl.workers.rollout.replica import RolloutReplicaRegistry

    from am3_verl.hf_rollout.adapter import HFServerAdapter
    from am3_verl.hf_rollout.replica import HFReplica

    try:
        return RolloutReplicaRegistry.get(ROLLOUT_NAME) is HFReplica and get_rollout_class(ROLLOUT_NAME) is HFServerAdapter
    except (ValueError, AssertionError):
        return False
