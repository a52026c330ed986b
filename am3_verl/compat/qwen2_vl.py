"""verl 0.9.1 bug (GPUs too): a Qwen2-VL / Qwen2.5-VL micro-batch without images crashes in verl's input embedding."""

from __future__ import annotations

from typing import Any, Callable

from am3_verl.compat.marks import MARK


def fix_qwen2_vl_text_only_batches() -> None:
    """Let Qwen2-VL / Qwen2.5-VL micro-batches without any image pass verl's input-embedding helper.

    The replacement delegates every batch that has images or videos to verl's own function unchanged;
    for a text-only batch it does what verl intends (a zero-weighted dummy pass through the vision tower,
    so every rank touches the same parameters under FSDP) with the vision output unpacked.
    """
    import functools

    from verl.models.transformers import qwen2_vl

    original: Callable[..., Any] = qwen2_vl._get_input_embeds
    if getattr(original, MARK, False):
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

    setattr(_get_input_embeds, MARK, True)
    qwen2_vl._get_input_embeds = _get_input_embeds
