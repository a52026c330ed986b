"""Processor reaches: verl 0.9.1's ``hf_processor`` (no registry for processor classes) and transformers'
``_pad_for_batching`` of the LLaVA-NeXT image processor (no option for a fixed crop count).

The LLaVA-NeXT logic itself (which checkpoints, how many crops) is :mod:`am3_verl.models.llava_next`;
this module only installs it where verl and transformers offer no hook.
"""

from __future__ import annotations

import functools
import importlib
import sys
from typing import Any, Callable, Optional

from am3_verl.compat.marks import MARK

HF_PROCESSOR_MODULE = "verl.utils.tokenizer.tokenizer"
"""Where verl 0.9.1 defines ``hf_processor`` (verl/utils/tokenizer/tokenizer.py:182)."""
HF_PROCESSOR_BINDINGS: tuple[str, ...] = (
    HF_PROCESSOR_MODULE,
    "verl.utils.tokenizer",
    "verl.utils",
    "verl.workers.config.model",
    "verl.model_merger.base_model_merger",
    "verl.model_merger.megatron_model_merger",
    "verl.experimental.fully_async_policy.fully_async_main",
    "verl.experimental.one_step_off_policy.main_ppo",
)
"""Every module of verl 0.9.1 that binds ``hf_processor`` by name (``grep -rn hf_processor verl``)."""

ProcessorLoader = Callable[..., Optional[Any]]
"""``(name_or_path, **kwargs) -> processor``, or None to leave the checkpoint to verl's own function."""


def wrap_hf_processor(loader: ProcessorLoader) -> None:
    """Bind, in every imported module of :data:`HF_PROCESSOR_BINDINGS`, an ``hf_processor`` that asks ``loader`` first.

    The wrapper hands every checkpoint ``loader`` declines (returns None for) to verl's own function
    unchanged. Idempotent for the same ``loader``; modules imported later take the name from an already
    rebound package. Only bindings that still point at verl's own function are replaced.
    """
    defining = importlib.import_module(HF_PROCESSOR_MODULE)
    current = defining.hf_processor
    original = current.__wrapped__ if getattr(current, MARK, False) else current
    if getattr(current, MARK, False) and getattr(current, "loader", None) is loader:
        wrapper = current
    else:

        @functools.wraps(original)
        def wrapper(name_or_path, **kwargs):
            processor = loader(name_or_path, **kwargs)
            return original(name_or_path, **kwargs) if processor is None else processor

        setattr(wrapper, MARK, True)
        wrapper.__wrapped__ = original
        wrapper.loader = loader
    for name in HF_PROCESSOR_BINDINGS:
        module = sys.modules.get(name) if name != HF_PROCESSOR_MODULE else defining
        if module is not None and getattr(module, "hf_processor", None) in (original, current):
            module.hf_processor = wrapper


def hf_processor_wrapped() -> bool:
    """Whether every imported module of :data:`HF_PROCESSOR_BINDINGS` binds the wrapper of :func:`wrap_hf_processor`."""
    bound = [getattr(sys.modules[name], "hf_processor", None) for name in HF_PROCESSOR_BINDINGS if name in sys.modules]
    return bool(bound) and all(getattr(fn, MARK, False) for fn in bound)


class _FixedPatchCount:
    """Mixin over a LLaVA-NeXT image processor: fixed crop count, ViT ``patch_size`` for verl, clean ``to_dict``."""

    _am3_num_patches: int = 0
    _am3_vit_patch_size: Optional[int] = None

    def _pad_for_batching(self, pixel_values: list[Any]) -> list[Any]:
        target = self._am3_num_patches
        padded = []
        for image in pixel_values:
            count = int(image.shape[0])
            if count > target:
                raise ValueError(f"an image gave {count} crops, more than the {target} its pinpoints allow")
            padded.append(_pad_first_dim(image, target))
        return padded

    @property
    def patch_size(self) -> Optional[int]:
        # verl's datasets read ``processor.image_processor.patch_size`` (MultiTurnSFTDataset requires it)
        return self._am3_vit_patch_size

    def to_dict(self) -> dict[str, Any]:
        # Saved checkpoints stay plain Hugging Face ones: no am3 attributes, the stock class name.
        output = super().to_dict()
        output.pop("_am3_vit_patch_size", None)
        output.pop("_am3_num_patches", None)
        output["image_processor_type"] = type(self).__mro__[2].__name__
        return output


@functools.lru_cache(maxsize=None)
def _fixed_class(base: type) -> type:
    # Same __name__ as the base, so anything keyed on the class name (verl, transformers) sees the stock class.
    return type(base.__name__, (_FixedPatchCount, base), {"__module__": base.__module__, "__doc__": base.__doc__})


def pad_crops_to(image_processor: Any, num_patches: int, vit_patch_size: Optional[int] = None) -> Any:
    """Make ``image_processor`` pad every image's crops to ``num_patches``; returns the same object.

    Switches the instance to a subclass of its own class that overrides transformers' private
    ``_pad_for_batching`` (the hook both LLaVA-NeXT image-processor backends call, transformers 5.x) and
    exposes ``patch_size`` (the vision tower's patch, which verl's datasets read). Idempotent.
    """
    if isinstance(image_processor, _FixedPatchCount):
        return image_processor
    if not callable(getattr(image_processor, "_pad_for_batching", None)):
        raise TypeError(
            f"{type(image_processor).__name__} has no _pad_for_batching; the fixed crop count of am3_verl.compat "
            "was written for transformers' LlavaNextImageProcessor(Pil)"
        )
    image_processor.__class__ = _fixed_class(type(image_processor))
    image_processor._am3_num_patches = int(num_patches)
    image_processor._am3_vit_patch_size = vit_patch_size
    return image_processor


def _pad_first_dim(image: Any, target: int) -> Any:
    missing = target - int(image.shape[0])
    if missing == 0:
        return image
    import torch

    if isinstance(image, torch.Tensor):
        return torch.cat([image, image.new_zeros((missing, *image.shape[1:]))], dim=0)
    import numpy as np

    return np.concatenate([image, np.zeros((missing, *image.shape[1:]), dtype=image.dtype)], axis=0)
