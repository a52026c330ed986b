"""LLaVA-NeXT (``LlavaNextForConditionalGeneration``) as a base model under stock verl 0.9.1.

verl 0.9.1 has no LLaVA support: ``verl.utils.tokenizer.tokenizer.hf_processor`` matches the
processor's class name against Qwen-VL / GLM-4V / Gemma4 / Mllama and, for anything else, swallows a
``ValueError("Unsupported processor type: LlavaNextProcessor")`` and returns ``None``. Every verl path
that needs images then breaks: ``HFModelConfig.processor`` (SFT trainer, actor, agent-loop workers) is
``None``, the SFT dataset cannot expand ``<image>`` and the agent loop refuses image prompts.
``hf_processor`` has no registry or config hook, so :func:`register` wraps it, isolated here (the other
reaches into verl internals live in :mod:`am3_verl.compat`):

* the wrapper handles a checkpoint whose ``config.json`` ``model_type`` is ``llava_next`` and hands
  every other checkpoint to verl's own function unchanged (same arguments, same result);
* for LLaVA-NeXT it returns the checkpoint's ``LlavaNextProcessor`` with ``processor.config`` set
  (as verl does for the processors it knows) and no ``get_rope_index`` (LLaVA-NeXT uses 1-D
  positions, which verl then computes from the attention mask);
* it is bound wherever verl 0.9.1 bound ``hf_processor`` by name before the plugin ran
  (:data:`PATCHED_MODULES`): the defining module, ``verl.utils.tokenizer``, ``verl.utils`` and the
  already-imported importers such as ``verl.workers.config.model`` (``HFModelConfig``). Modules
  imported later take the name from ``verl.utils``/``verl.utils.tokenizer`` and so get the wrapper.

Fixed patch count. LLaVA-NeXT's image processor tiles each image into ``1 + rows * cols`` crops
(any-resolution: the best pinpoint for the image's size), so ``pixel_values`` is
``[num_images, num_patches, 3, H, W]`` with ``num_patches`` depending on the image and padded only to
the largest image *of one processor call*. verl keeps one ``multi_modal_inputs`` dict per sample and
its ``extract_multi_modal_inputs`` concatenates them along dim 0, which fails when two samples of a
micro-batch have different patch counts. The processor returned here therefore pads every image to
the largest count any pinpoint can give (:func:`max_num_patches`; 5 for llava-v1.6's pinpoints).
This is exactly the padding the image processor already applies within a call: the model slices
each image's real patches out using ``image_sizes``, so image tokens, features and logits are
unchanged; the cost is the zero crops' memory in ``pixel_values`` (no extra vision compute).

Version: written against verl 0.9.1 (``hf_processor`` at verl/utils/tokenizer/tokenizer.py:182).
Drop :func:`register` once verl's ``hf_processor`` knows ``LlavaNextProcessor``.
"""

from __future__ import annotations

import functools
import importlib
import logging
import sys
from typing import Any, Callable, Optional

logger = logging.getLogger(__name__)

MODEL_TYPE = "llava_next"
PROCESSOR_CLASS = "LlavaNextProcessor"
VERL_VERSION = "0.9.1"

DEFINING_MODULE = "verl.utils.tokenizer.tokenizer"
PATCHED_MODULES: tuple[str, ...] = (
    DEFINING_MODULE,
    "verl.utils.tokenizer",
    "verl.utils",
    "verl.workers.config.model",
    "verl.model_merger.base_model_merger",
    "verl.model_merger.megatron_model_merger",
    "verl.experimental.fully_async_policy.fully_async_main",
    "verl.experimental.one_step_off_policy.main_ppo",
)
"""Every module of verl 0.9.1 that binds ``hf_processor`` by name (``grep -rn hf_processor verl``)."""

_WRAPPER_MARK = "__am3_llava_next__"
"""Attribute set on the wrapped ``hf_processor``."""


def max_num_patches(image_processor: Any) -> int:
    """The largest ``num_patches`` the LLaVA-NeXT image processor can give: 1 base crop + the biggest grid.

    Mirrors ``LlavaNextImageProcessor._preprocess``: crops are ``crop_size`` (else ``size``) squares and a
    pinpoint ``(h, w)`` is cut into ``(h // crop) * (w // crop)`` of them.
    """
    crop = _crop_edge(image_processor)
    pinpoints = getattr(image_processor, "image_grid_pinpoints", None)
    if not pinpoints:
        raise ValueError(f"{type(image_processor).__name__} has no image_grid_pinpoints; not a LLaVA-NeXT image processor")
    return 1 + max((int(h) // crop) * (int(w) // crop) for h, w in pinpoints)


def _crop_edge(image_processor: Any) -> int:
    def get(obj: Any, key: str) -> Optional[int]:
        if obj is None:
            return None
        value = obj.get(key) if isinstance(obj, dict) else getattr(obj, key, None)
        return int(value) if value else None

    crop_size, size = getattr(image_processor, "crop_size", None), getattr(image_processor, "size", None)
    edge = get(crop_size, "height") or get(size, "height") or get(size, "shortest_edge")
    if not edge:
        raise ValueError(f"{type(image_processor).__name__}: cannot tell the crop size from crop_size={crop_size!r}, size={size!r}")
    return edge


class _FixedPatchCount:
    """Mixin over a LLaVA-NeXT image processor: fixed crop count, ViT ``patch_size`` for verl, clean ``to_dict``."""

    _am3_vit_patch_size: Optional[int] = None

    def _pad_for_batching(self, pixel_values: list[Any]) -> list[Any]:
        target = max_num_patches(self)
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
        output["image_processor_type"] = type(self).__mro__[2].__name__
        return output


@functools.lru_cache(maxsize=None)
def _fixed_class(base: type) -> type:
    # Same __name__ as the base, so anything keyed on the class name (verl, transformers) sees the stock class.
    return type(base.__name__, (_FixedPatchCount, base), {"__module__": base.__module__, "__doc__": base.__doc__})


def fix_patch_count(image_processor: Any, vit_patch_size: Optional[int] = None) -> Any:
    """Make ``image_processor`` pad every image's crops to :func:`max_num_patches` (see the module docstring).

    Switches the instance to a subclass of its own class that overrides ``_pad_for_batching`` (the hook
    both LLaVA-NeXT image-processor backends call) and exposes ``patch_size`` (the vision tower's patch,
    which verl's datasets read); returns the same object. Idempotent.
    """
    if isinstance(image_processor, _FixedPatchCount):
        return image_processor
    if not callable(getattr(image_processor, "_pad_for_batching", None)):
        raise TypeError(
            f"{type(image_processor).__name__} has no _pad_for_batching; the fixed-patch-count policy of "
            "am3_verl.models.llava_next was written for transformers' LlavaNextImageProcessor(Pil)"
        )
    max_num_patches(image_processor)  # fail now, not at the first image, when pinpoints are missing
    image_processor.__class__ = _fixed_class(type(image_processor))
    image_processor._am3_vit_patch_size = vit_patch_size
    return image_processor


def _pad_first_dim(image: Any, target: int) -> Any:
    missing = target - int(image.shape[0])
    if missing == 0:
        return image
    try:
        import torch

        if isinstance(image, torch.Tensor):
            return torch.cat([image, image.new_zeros((missing, *image.shape[1:]))], dim=0)
    except ImportError:  # pragma: no cover - torch is a verl dependency
        pass
    import numpy as np

    return np.concatenate([image, np.zeros((missing, *image.shape[1:]), dtype=image.dtype)], axis=0)


def is_llava_next(name_or_path: Any, **kwargs: Any) -> bool:
    """Whether the checkpoint at ``name_or_path`` is a LLaVA-NeXT (root ``config.json`` ``model_type``)."""
    from transformers import AutoConfig

    config_kwargs = {k: v for k, v in kwargs.items() if k in ("trust_remote_code", "revision", "cache_dir", "token")}
    try:
        config = AutoConfig.from_pretrained(name_or_path, **config_kwargs)
    except Exception:  # not a model folder we can read: verl's own function decides (and reports)
        return False
    return getattr(config, "model_type", None) == MODEL_TYPE


def load_processor(name_or_path: Any, **kwargs: Any) -> Any:
    """The checkpoint's ``LlavaNextProcessor``, ready for verl: ``config`` bound, fixed patch count.

    Raises ``ValueError`` naming the class when the checkpoint's processor is not a LLaVA-NeXT one.
    """
    from transformers import AutoConfig, AutoProcessor

    processor = AutoProcessor.from_pretrained(name_or_path, **kwargs)
    if type(processor).__name__ != PROCESSOR_CLASS:
        raise ValueError(
            f"{name_or_path}: model_type {MODEL_TYPE!r} but AutoProcessor gave {type(processor).__name__}, "
            f"not {PROCESSOR_CLASS}"
        )
    processor.config = AutoConfig.from_pretrained(name_or_path, **kwargs)
    vit_patch_size = getattr(processor, "patch_size", None) or processor.config.vision_config.patch_size
    fix_patch_count(processor.image_processor, vit_patch_size=int(vit_patch_size))
    return processor


def _wrap(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def hf_processor(name_or_path, **kwargs):
        if is_llava_next(name_or_path, **kwargs):
            return load_processor(name_or_path, **kwargs)
        return original(name_or_path, **kwargs)

    setattr(hf_processor, _WRAPPER_MARK, True)
    hf_processor.__wrapped__ = original
    return hf_processor


def register() -> None:
    """Bind the LLaVA-NeXT-aware ``hf_processor`` in every verl module of :data:`PATCHED_MODULES`.

    Idempotent. Modules not imported yet are left alone: they import the name from an already
    patched package. Only bindings that still point at verl's own function are replaced.
    """
    import verl

    defining = importlib.import_module(DEFINING_MODULE)
    current = defining.hf_processor
    if getattr(current, _WRAPPER_MARK, False):
        original, wrapper = current.__wrapped__, current
    else:
        if getattr(verl, "__version__", None) != VERL_VERSION:
            logger.warning(
                "am3_verl.models.llava_next wraps hf_processor of verl %s; this verl is %s",
                VERL_VERSION,
                getattr(verl, "__version__", "?"),
            )
        original, wrapper = current, _wrap(current)
    for name in PATCHED_MODULES:
        module = sys.modules.get(name) if name != DEFINING_MODULE else defining
        if module is not None and getattr(module, "hf_processor", None) is original:
            module.hf_processor = wrapper


def is_registered() -> bool:
    """Whether every imported module of :data:`PATCHED_MODULES` binds the LLaVA-NeXT-aware function."""
    bound = [getattr(sys.modules[name], "hf_processor", None) for name in PATCHED_MODULES if name in sys.modules]
    return bool(bound) and all(getattr(fn, _WRAPPER_MARK, False) for fn in bound)
