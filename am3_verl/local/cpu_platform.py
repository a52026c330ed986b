"""A CPU platform for verl 0.9.1, so its SFT trainer and FSDP engine run on machines without a GPU.

verl has no CPU platform and falls back to CUDA. :func:`register` adds one through verl's own
``PlatformRegistry`` (name ``cpu``) and registers verl's FSDP engines for the ``cpu`` device through
``EngineRegistry``. Nothing changes unless ``VERL_PLATFORM=cpu`` is set: on a GPU machine the class is
registered but never detected (it reports itself unavailable to auto-detection).

One thing has no hook: verl's process-group initialisers build the backend string
``f"cpu:gloo,{device}:{backend}"``, the duplicate ``cpu:gloo,cpu:gloo`` on CPU that torch rejects;
:func:`am3_verl.compat.use_gloo_process_group` replaces them when the CPU platform is selected.

Runs also need these overrides (see README, "CPU runs"): ``trainer.device=cpu``,
``engine.strategy=fsdp2``, ``model.use_remove_padding=False``,
``+model.override_config.attn_implementation=sdpa``.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from types import ModuleType
from typing import Any, Optional

import torch

PLATFORM_NAME = "cpu"


def cpu_platform_selected() -> bool:
    """True when the user asked verl for the CPU platform (``VERL_PLATFORM=cpu``)."""
    return os.environ.get("VERL_PLATFORM", "").strip().lower() == PLATFORM_NAME


def _make_platform_class():
    from verl.plugin.platform import PlatformBase

    class PlatformCPU(PlatformBase):
        """verl platform backed by the host CPU (gloo collectives, no device memory)."""

        @property
        def device_name(self) -> str:
            return "cpu"

        @property
        def vendor_name(self) -> str:
            return "cpu"

        @property
        def device_module(self) -> ModuleType:
            from am3_verl.local import cpu_device

            return cpu_device

        def is_available(self) -> bool:
            return True

        def is_platform_available(self, use_smi_check: bool = False) -> bool:
            # Never auto-detected: only an explicit VERL_PLATFORM=cpu selects it.
            return cpu_platform_selected()

        def current_device(self) -> str:
            # verl passes this straight to ``.to()`` / ``torch.device()``; an int would mean cuda:N.
            return "cpu"

        def device_count(self) -> int:
            return 1

        def set_device(self, device_index: int) -> None:
            return None

        def synchronize(self, device_index: Optional[int] = None) -> None:
            return None

        def manual_seed(self, seed: int) -> None:
            torch.manual_seed(seed)

        def manual_seed_all(self, seed: int) -> None:
            torch.manual_seed(seed)

        def set_allocator_settings(self, settings: str) -> None:
            return None

        def empty_cache(self) -> None:
            return None

        def get_device_capability(self, device_index: int = 0) -> tuple[Optional[int], Optional[int]]:
            return None, None

        def communication_backend_name(self) -> str:
            return "gloo"

        def visible_devices_envvar(self) -> str:
            return "AM3_CPU_VISIBLE_DEVICES"

        @contextmanager
        def nvtx_range(self, msg: str):
            yield

        def profiler_start(self) -> None:
            return None

        def profiler_stop(self) -> None:
            return None

        def ray_resource_name(self) -> str:
            return "CPU"

        def ray_resource_options(self, num_gpus: float) -> dict[str, Any]:
            return {"num_cpus": num_gpus}

        def ray_noset_envvars(self) -> list[str]:
            return []

        def is_ipc_supported(self) -> bool:
            return False

        def cudart(self) -> Any:
            return None

    return PlatformCPU


def _register_fsdp_engines_for_cpu() -> None:
    from verl.workers.engine.base import EngineRegistry
    from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead, FSDPEngineWithValueHead

    for model_type, engine_cls in (("language_model", FSDPEngineWithLMHead), ("value_model", FSDPEngineWithValueHead)):
        for backend in ("fsdp", "fsdp2"):
            if PLATFORM_NAME not in EngineRegistry._engines.get(model_type, {}).get(backend, {}):
                EngineRegistry.register(model_type=model_type, backend=backend, device=PLATFORM_NAME)(engine_cls)


def register() -> None:
    """Register the CPU platform; when ``VERL_PLATFORM=cpu``, also the CPU engines and the gloo fix."""
    from verl.plugin.platform import PlatformRegistry

    if PlatformRegistry.get(PLATFORM_NAME) is None:
        PlatformRegistry.register(platform=PLATFORM_NAME)(_make_platform_class())
    if cpu_platform_selected():
        _register_fsdp_engines_for_cpu()
