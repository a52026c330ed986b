"""LLaVA-NeXT (``LlavaNextForConditionalGeneration``) as a base model under stock verl 0.9.1.

verl 0.9.1 has no LLaVA support: ``verl.utils.tokenizer.tokenizer.hf_processor`` matches the
processor's class name against Qwen-VL / GLM-4V / Gemma4 / Mllama and, for anything else, swallows a
``ValueError("Unsupported processor type: LlavaNextProcessor")`` and returns ``None``. Every verl path
that needs images then breaks: ``HFModelConfig.processor`` (SFT trainer, actor, agent-loop workers) is
``None``, the SFT dataset cannot expand ``<image>`` and the agent loop refuses image prompts.
``hf_processor`` has no registry or config hook, so :func:`register` wraps it through
:func:`am3_verl.compat.processors.wrap_hf_processor`:

* the wrapper handles a checkpoint whose ``config.json`` ``model_type`` is ``llava_next`` and hands
  every other checkpoint to verl's own function unchanged (same arguments, same result);
* for LLaVA-NeXT it returns the checkpoint's ``LlavaNextProcessor`` with ``processor.config`` set
  (as verl does for the processors it knows) and no ``get_rope_index`` (LLaVA-NeXT uses 1-D
  positions, which verl then computes from the attention mask);
* it is bound wherever verl 0.9.1 bound ``hf_processor`` by name before the plugin ran (the defining
  module, ``verl.utils.tokenizer``, ``verl.utils`` and already-imported importers such as
  ``verl.workers.config.model``); modules imported later take the name from a rebound package.

Fixed patch count. LLaVA-NeXT's image processor tiles each image into ``1 + rows * cols`` crops
(any-resolution: the best pinpoint for the image's size), so ``pixel_values`` is
``[num_images, num_patches, 3, H, W]`` with ``num_patches`` depending on the image and padded only to
the largest image *of one processor call*. verl keeps one ``multi_modal_inputs`` dict per sample and
its ``extract_multi_modal_inputs`` concatenates them along dim 0, which fails when two samples of a
micro-batch have different patch counts. The processor returned here therefore pads every image to
the largest count any pinpoint can give (:func:`max_num_patches`; 5 for llava-v1.6's pinpoints).
This is exactly the padding the image processor already applies within a call: the model slices
each image's real patches out using ``image_sizes``, so image tokens, features and logits are
unchanged; the cost is the zero crops' memory in ``pixel_values`` (no extra vision compute). The
padding is installed by :func:`am3_verl.compat.processors.pad_crops_to` (transformers has no option for it).

Drop :func:`register` once verl's ``hf_processor`` knows ``LlavaNextProcessor``.
"""

from __future__ import annotations

from typing import Any, Optional

from am3_verl.compat.processors import hf_processor_wrapped, pad_crops_to, wrap_hf_processor

MODEL_TYPE = "llava_next"
PROCESSOR_CLASS = "LlavaNextProcessor"


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


def fix_patch_count(image_processor: Any, vit_patch_size: Optional[int] = None) -> Any:
    """Make ``image_processor`` pad every image's crops to :func:`max_num_patches` (see the module docstring).

    Returns the same object; idempotent. Raises ``ValueError`` when it has no pinpoints.
    """
    return pad_crops_to(image_processor, max_num_patches(image_processor), vit_patch_size=vit_patch_size)


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
            f"{name_or_path}: model_type {MODEL_TYPE!r} but AutoProcessor gave {type(processor).__name__}, not {PROCESSOR_CLASS}"
        )
    processor.config = AutoConfig.from_pretrained(name_or_path, **kwargs)
    vit_patch_size = getattr(processor, "patch_size", None) or processor.config.vision_config.patch_size
    fix_patch_count(processor.image_processor, vit_patch_size=int(vit_patch_size))
    return processor


def _load_if_llava_next(name_or_path: Any, **kwargs: Any) -> Any:
    return load_processor(name_or_path, **kwargs) if is_llava_next(name_or_path, **kwargs) else None


def register() -> None:
    """Make verl's ``hf_processor`` return :func:`load_processor`'s processor for LLaVA-NeXT checkpoints (idempotent)."""
    wrap_hf_processor(_load_if_llava_next)


def is_registered() -> bool:
    """Whether every imported verl module binds the LLaVA-NeXT-aware ``hf_processor``."""
    return hf_processor_wrapped()
