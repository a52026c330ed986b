"""The places where am3-verl reaches into verl internals that have no public hook, in one module.

Each function below changes one verl 0.9.1 internal, says where it is and which upstream hook would make
it unnecessary. :func:`apply` (called by the plugin) first checks the installed verl: on a release other
than :data:`VERL_VERSION` it raises :class:`UnsupportedVerlVersion` naming every reach, instead of
patching code it was not written for. The reaches (verl 0.9.1 location -> the hook that would remove it):

* process-group backend, CPU only (``utils/distributed.py:62-99``, also bound by name in
  ``workers/engine_workers.py`` and ``checkpoint_engine/base.py``) -> a backend option in
  ``initialize_global_process_group*``;
* rollout adapter registry (``workers/rollout/base.py:89`` ``_ROLLOUT_REGISTRY``) -> a public
  ``register_rollout_class``;
* Qwen2-VL micro-batches without images (``models/transformers/qwen2_vl.py:388-393``) -> verl unpacking
  the vision output in its text-only branch (a verl bug with transformers 5, GPUs included);
* unpinned FSDP2 CPU offload, CPU only (``workers/engine/fsdp/transformer_impl.py:462``, forward-only
  engines such as the reference model) -> ``pin_memory`` following the device.

The other reach, the LLaVA-NeXT ``hf_processor`` binding, lives with the LLaVA-NeXT support
(:mod:`am3_verl.models.llava_next`).
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any, Callable

VERL_VERSION = "0.9.1"
"""The verl release every reach below was written against and tested with."""

REACHES: tuple[str, ...] = (
    "verl.utils.distributed.initialize_global_process_group (+ _ray variant, bound in engine_workers/checkpoint_engine)",
    "verl.workers.rollout.base._ROLLOUT_REGISTRY[('hf', 'async')]",
    "verl.models.transformers.qwen2_vl._get_input_embeds (image-less micro-batches)",
    "verl.workers.engine.fsdp.transformer_impl.CPUOffloadPolicy (unpinned on the CPU platform)",
)
"""One line per verl internal this module changes; :class:`UnsupportedVerlVersion` lists them."""

_MARK = "_am3_compat"
"""Attribute set on every function this module installs, so re-applying is a no-op."""


class UnsupportedVerlVersion(RuntimeError):
    """The installed verl is not the release am3-verl's compatibility reaches were written for."""


def installed_verl_version() -> str:
    """The version string of the installed verl package."""
    import verl

    return str(getattr(verl, "__version__", "unknown"))


REQUIRED_VERL_FILE = "REQUIRED_VERL.txt"
"""Next to every recipe folder's files (``recipes/*/REQUIRED_VERL.txt``): the verl release they need, as
``KEY=VALUE`` lines (``UPSTREAM``, ``MODE``, ``VERSION``, ``PIP_INSTALL``, ``NOTES``), verl-recipe's convention."""


def read_required_verl(path: str | os.PathLike) -> dict[str, str]:
    """The ``KEY=VALUE`` lines of a ``REQUIRED_VERL.txt`` (``#`` comments and blank lines skipped).

    Raises ``ValueError`` naming the file and line for a line that is not ``KEY=VALUE`` or a repeated key."""
    entries: dict[str, str] = {}
    with open(path, encoding="utf-8") as fh:
        for number, raw in enumerate(fh, start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            key, sep, value = line.partition("=")
            if not sep or not key.strip().isidentifier() or key.strip() in entries:
                raise ValueError(f"{path} line {number}: expected a new KEY=VALUE line, got {line!r}")
            entries[key.strip()] = value.strip()
    return entries


def check_verl_version() -> None:
    """Raise :class:`UnsupportedVerlVersion` unless verl is :data:`VERL_VERSION`."""
    found = installed_verl_version()
    if found != VERL_VERSION:
        raise UnsupportedVerlVersion(
            f"am3-verl was written for verl {VERL_VERSION} (the release named in recipes/*/{REQUIRED_VERL_FILE}) and "
            f"reaches into these verl internals, which have no public hook: {'; '.join(REACHES)}. Installed verl is "
            f"{found}: install verl=={VERL_VERSION} (pip install 'verl[verl-core]==" + VERL_VERSION + "') or port "
            "am3_verl/compat.py to it."
        )


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

    if getattr(distributed.initialize_global_process_group, _MARK, False):
        return

    def initialize_global_process_group(timeout_second: int = 36000):
        _gloo_process_group(timedelta(seconds=timeout_second))
        return int(os.environ["LOCAL_RANK"]), int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])

    def initialize_global_process_group_ray(timeout_second=None, backend=None):
        if not torch.distributed.is_initialized():
            timeout = timedelta(seconds=timeout_second) if timeout_second is not None else None
            _gloo_process_group(timeout, int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)))

    for function in (initialize_global_process_group, initialize_global_process_group_ray):
        setattr(function, _MARK, True)
    distributed.initialize_global_process_group = initialize_global_process_group
    distributed.initialize_global_process_group_ray = initialize_global_process_group_ray
    engine_workers.initialize_global_process_group_ray = initialize_global_process_group_ray
    checkpoint_engine_base.initialize_global_process_group_ray = initialize_global_process_group_ray


def register_rollout_adapter(name: str, target: str, mode: str = "async") -> None:
    """Name the ``BaseRollout`` adapter class (dotted path) verl's actor workers build for ``rollout.name=name``.

    verl 0.9.1 looks adapters up in the private dict ``_ROLLOUT_REGISTRY`` (workers/rollout/base.py:89,
    read at workers/engine_workers.py:667) and has no function to add one. An existing entry for the
    same key with another target is an error, never overwritten.
    """
    from verl.workers.rollout import base

    existing = base._ROLLOUT_REGISTRY.get((name, mode))
    if existing not in (None, target):
        raise ValueError(f"verl's rollout adapter registry already maps {(name, mode)!r} to {existing!r}")
    base._ROLLOUT_REGISTRY[(name, mode)] = target


def fix_qwen2_vl_text_only_batches() -> None:
    """Let Qwen2-VL / Qwen2.5-VL micro-batches without any image pass verl's input-embedding helper.

    The replacement delegates every batch that has images or videos to verl's own function unchanged;
    for a text-only batch it does what verl intends (a zero-weighted dummy pass through the vision tower,
    so every rank touches the same parameters under FSDP) with the vision output unpacked.
    """
    import functools

    from verl.models.transformers import qwen2_vl

    original: Callable[..., Any] = qwen2_vl._get_input_embeds
    if getattr(original, _MARK, False):
        return

    @functools.wraps(original)
    def _get_input_embeds(model, input_ids, attention_mask=None, pixel_values=None, pixel_values_videos=None,
                          image_grid_thw=None, video_grid_thw=None):  # fmt: skip
        if pixel_values is not None or pixel_values_videos is not None:
            return original(model, input_ids, attention_mask, pixel_values, pixel_values_videos, image_grid_thw, video_grid_thw)
        import torch

        inputs_embeds = model.get_input_embeddings()(input_ids)
        config = model.config.vision_config
        patch_dim = config.in_channels * config.temporal_patch_size * config.patch_size**2
        dummy = torch.zeros((16, patch_dim), dtype=inputs_embeds.dtype, device=inputs_embeds.device)
        grid = torch.tensor([[1, 4, 4]], dtype=torch.long, device=inputs_embeds.device)
        image_embeds, _ = qwen2_vl.unpack_visual_output(model.visual(dummy, grid_thw=grid))
        inputs_embeds = inputs_embeds + 0.0 * image_embeds.mean()
        if attention_mask is not None:
            attention_mask = attention_mask.to(inputs_embeds.device)
        return inputs_embeds, attention_mask

    setattr(_get_input_embeds, _MARK, True)
    qwen2_vl._get_input_embeds = _get_input_embeds


def unpinned_cpu_offload() -> None:
    """Make verl's FSDP2 engine build its CPU offload policy without pinned memory (CPU platform only).

    verl 0.9.1 gives every forward-only engine (the reference model) ``CPUOffloadPolicy(pin_memory=True)``
    (workers/engine/fsdp/transformer_impl.py:462); pinning host memory needs a CUDA driver. On the CPU
    platform the name in that module is bound to a subclass that ignores ``pin_memory`` and never pins.
    """
    from torch.distributed.fsdp import CPUOffloadPolicy
    from verl.workers.engine.fsdp import transformer_impl

    if getattr(transformer_impl.CPUOffloadPolicy, _MARK, False):
        return

    class UnpinnedCPUOffloadPolicy(CPUOffloadPolicy):
        """``CPUOffloadPolicy`` that never pins host memory."""

        def __init__(self, pin_memory: bool = False):
            super().__init__(pin_memory=False)

    setattr(UnpinnedCPUOffloadPolicy, _MARK, True)
    transformer_impl.CPUOffloadPolicy = UnpinnedCPUOffloadPolicy


def apply(cpu_platform: bool) -> None:
    """Check the verl version, then apply the patches (the process-group one only for the CPU platform).

    :func:`register_rollout_adapter` is called by :mod:`am3_verl.hf_rollout` when it registers.
    """
    check_verl_version()
    fix_qwen2_vl_text_only_batches()
    if cpu_platform:
        use_gloo_process_group()
        unpinned_cpu_offload()
