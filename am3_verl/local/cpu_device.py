"""The ``torch.<device>``-style module verl's CPU platform hands out (``get_torch_device()``).

verl calls CUDA-module functions on it (``memory_reserved``, ``empty_cache``, ``mem_get_info``,
``get_rng_state`` ...). ``torch.cpu`` lacks most of them; here they are defined for the host: device
memory counters are 0 (the CPU has no separate device memory to account), ``mem_get_info`` reports the
host's available and total RAM, and RNG state is torch's global CPU generator.
"""

from __future__ import annotations

import os

import torch
from torch.cpu import Event, Stream, current_stream, device_count, is_available, stream, synchronize  # noqa: F401


def set_device(device=None) -> None:
    """No-op: there is one CPU device."""


def current_device() -> str:
    """The device string verl passes to ``.to()``."""
    return "cpu"


def get_device_name(device=None) -> str:
    """Human-readable device name."""
    return "cpu"


def empty_cache() -> None:
    """No-op: the CPU allocator has no cache to release."""


def ipc_collect() -> None:
    """No-op: no inter-process device memory."""


def memory_allocated(device=None) -> int:
    """0: no device-memory accounting on the CPU."""
    return 0


memory_reserved = max_memory_allocated = max_memory_reserved = memory_allocated


def reset_peak_memory_stats(device=None) -> None:
    """No-op."""


def set_per_process_memory_fraction(fraction: float, device=None) -> None:
    """No-op."""


def mem_get_info(device=None) -> tuple[int, int]:
    """``(available, total)`` host memory in bytes."""
    page = os.sysconf("SC_PAGE_SIZE")
    return os.sysconf("SC_AVPHYS_PAGES") * page, os.sysconf("SC_PHYS_PAGES") * page


def get_rng_state(device=None) -> torch.Tensor:
    """torch's global CPU generator state."""
    return torch.get_rng_state()


def set_rng_state(state: torch.Tensor, device=None) -> None:
    """Restore torch's global CPU generator state."""
    torch.set_rng_state(state)


def manual_seed(seed: int) -> None:
    """Seed torch's global CPU generator."""
    torch.manual_seed(seed)


manual_seed_all = manual_seed
