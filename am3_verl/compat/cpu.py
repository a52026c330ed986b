"""Reaches the CPU platform needs (verl 0.9.1): gloo process groups, FSDP engines for ``cpu``, unpinned offload.

Applied only when ``VERL_PLATFORM=cpu`` selects am3-verl's platform (:mod:`am3_verl.local.cpu_platform`).
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

from am3_verl.compat.marks import MARK

FULL_LM_HEAD_ENV = "AM3_CPU_FULL_LM_HEAD"
"""``1``: the CPU platform registers verl's own language-model engine (the head at every position)."""


def _gloo_process_group(timeout: timedelta | None, rank: int | None = None, world_size: int | None = None) -> None:
    import torch.distributed

    kwargs: dict[str, Any] = {"backend": "gloo", "init_method": os.environ.get("DIST_INIT_METHOD", None)}
    if timeout is not None:
        kwargs["timeout"] = timeout
    if rank is not None:
        kwargs.update(rank=rank, world_size=world_size)
    torch.distributed.init_process_group(**kwargs)


def use_gloo_process_group() -> None:
    """Make verl's process-group initialisers use plain ``gloo`` (CPU platform only).

    verl 0.9.1 builds the backend string ``f"cpu:gloo,{device}:{backend}"``, which on the CPU is the
    duplicate ``cpu:gloo,cpu:gloo`` that torch rejects. Both initialisers are replaced, including the
    names ``engine_workers`` and ``checkpoint_engine.base`` imported from ``verl.utils.distributed``.
    """
    import torch.distributed
    import verl.checkpoint_engine.base as checkpoint_engine_base
    import verl.utils.distributed as distributed
    import verl.workers.engine_workers as engine_workers

    if getattr(distributed.initialize_global_process_group, MARK, False):
        return

    def initialize_global_process_group(timeout_second: int = 36000):
        _gloo_process_group(timedelta(seconds=timeout_second))
        return int(os.environ["LOCAL_RANK"]), int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])

    def initialize_global_process_group_ray(timeout_second=None, backend=None):
        if not torch.distributed.is_initialized():
            timeout = timedelta(seconds=timeout_second) if timeout_second is not None else None
            _gloo_process_group(timeout, int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)))

    for function in (initialize_global_process_group, initialize_global_process_group_ray):
        setattr(function, MARK, True)
    distributed.initialize_global_process_group = initialize_global_process_group
    distributed.initialize_global_process_group_ray = initialize_global_process_group_ray
    engine_workers.initialize_global_process_group_ray = initialize_global_process_group_ray
    checkpoint_engine_base.initialize_global_process_group_ray = initialize_global_process_group_ray


def unpinned_cpu_offload() -> None:
    """Make verl's FSDP2 engine build its CPU offload policy without pinned memory (CPU platform only).

    verl 0.9.1 gives every forward-only engine (the reference model) ``CPUOffloadPolicy(pin_memory=True)``
    (workers/engine/fsdp/transformer_impl.py:462); pinning host memory needs a CUDA driver. On the CPU
    platform the name in that module is bound to a subclass that ignores ``pin_memory`` and never pins.
    """
    from torch.distributed.fsdp import CPUOffloadPolicy
    from verl.workers.engine.fsdp import transformer_impl

    if getattr(transformer_impl.CPUOffloadPolicy, MARK, False):
        return

    class UnpinnedCPUOffloadPolicy(CPUOffloadPolicy):
        """``CPUOffloadPolicy`` that never pins host memory."""

        def __init__(self, pin_memory: bool = False):
            super().__init__(pin_memory=False)

    setattr(UnpinnedCPUOffloadPolicy, MARK, True)
    transformer_impl.CPUOffloadPolicy = UnpinnedCPUOffloadPolicy


def register_fsdp_engines_for_cpu(device: str = "cpu") -> None:
    """Register the FSDP engines (language and value model, ``fsdp``/``fsdp2``) for ``device`` (idempotent).

    The language model's is :class:`~am3_verl.compat.loss_positions_head.LossPositionsLMHeadEngine` (verl's
    engine with the output head run only where the loss reads), or verl's own ``FSDPEngineWithLMHead`` when
    ``AM3_CPU_FULL_LM_HEAD=1`` (to compare the two). The value model's is verl's.

    ``EngineRegistry.register`` is public but asserts when a key is taken and verl 0.9.1 has no lookup
    that ignores the current device, so the taken keys are read from the private ``EngineRegistry._engines``.
    """
    from verl.workers.engine.base import EngineRegistry
    from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead, FSDPEngineWithValueHead

    from am3_verl.compat.loss_positions_head import LossPositionsLMHeadEngine

    language_engine = FSDPEngineWithLMHead if os.environ.get(FULL_LM_HEAD_ENV) == "1" else LossPositionsLMHeadEngine
    for model_type, engine_cls in (("language_model", language_engine), ("value_model", FSDPEngineWithValueHead)):
        for backend in ("fsdp", "fsdp2"):
            if device not in EngineRegistry._engines.get(model_type, {}).get(backend, {}):
                EngineRegistry.register(model_type=model_type, backend=backend, device=device)(engine_cls)
