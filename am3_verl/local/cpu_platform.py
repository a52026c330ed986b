"""A CPU platform for verl 0.9.1, so its SFT trainer and FSDP engine run on machines without a GPU.

verl has no CPU platform and falls back to CUDA. :func:`register` adds one through verl's own
``PlatformRegistry`` (name ``cpu``). Nothing changes unless ``VERL_PLATFORM=cpu`` is set: on a GPU machine
the class is registered but never detected (it reports itself unavailable to auto-detection).

What has no hook (the gloo process groups, verl's FSDP engines for the ``cpu`` device, unpinned CPU
offload) is :mod:`am3_verl.compat.cpu`, applied by the plugin when the CPU platform is selected.

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
            # Each CPU rank holds one of the "GPU" slots the run declares to Ray (ray_init.num_gpus, which
            # verl's resource check counts), so verl's placement and its per-worker accelerator ids
            # (get_accelerator_ids()[name][0], read by its vLLM replica) work unchanged. Ray's CPU
            # resource has no accelerator ids. Torch ignores the CUDA_VISIBLE_DEVICES Ray sets.
            return "GPU"

        def ray_noset_envvars(self) -> list[str]:
            return []

        def is_ipc_supported(self) -> bool:
            return False

        def cudart(self) -> Any:
            return None

    return PlatformCPU


def register() -> None:
    """Register the CPU platform with verl's ``PlatformRegistry`` (idempotent)."""
    from verl.plugin.platform import PlatformRegistry

    if PlatformRegistry.get(PLATFORM_NAME) is None:
        PlatformRegistry.register(platform=PLATFORM_NAME)(_make_platform_class())
