"""vLLM 0.24's LLaVA-NeXT as verl's rollout needs it (see :mod:`.vllm_plugin`, which registers it for the architecture).

* Weight names. transformers 5's ``CLIPVisionModel`` has no ``vision_model`` submodule, so a LLaVA-NeXT
  trained with it names its vision weights ``model.vision_tower.embeddings...``; vLLM 0.24 builds the
  tower as ``vision_tower.vision_model.embeddings...``. The names released checkpoints use already carry
  ``vision_model.`` and pass unchanged.
* Expanded prompts. verl's agent loops tokenise with the Hugging Face processor, so each ``<image>`` of a
  token prompt is already expanded to the image's feature count. vLLM 0.24 takes a token prompt as
  unexpanded and expands the first ``<image>`` of each run again, so the model sees another sequence
  than the actor (measured: 48 prompt tokens became 71; log-probs off by 0.05 per token offline and
  0.11 in ``main_ppo``). verl
  collapses Qwen-VL's image pads for this reason (``qwen2_5_vl_dedup_image_tokens``), not LLaVA's. A
  token prompt with more ``<image>`` tokens than images is taken as already expanded: vLLM then locates
  each image's tokens (and refuses a count that does not match) instead of inserting them.
"""

from __future__ import annotations

import re
from typing import Any

from vllm.model_executor.models.llava import LlavaDummyInputsBuilder
from vllm.model_executor.models.llava_next import (
    LlavaNextForConditionalGeneration,
    LlavaNextMultiModalProcessor,
    LlavaNextProcessingInfo,
)
from vllm.model_executor.models.utils import WeightsMapper
from vllm.multimodal import MULTIMODAL_REGISTRY

FLAT_CLIP_NAME = re.compile(r"^(?:model\.)?vision_tower\.(?!vision_model\.)")
"""A vision-tower weight name without the ``vision_model.`` level (transformers 5)."""


class LlavaNextProcessorForExpandedPrompts(LlavaNextMultiModalProcessor):
    """vLLM's LLaVA-NeXT processor that recognises token prompts whose ``<image>`` tokens are already expanded."""

    def _apply_hf_processor_main(self, prompt: Any, mm_items: Any, hf_processor_mm_kwargs: Any, tokenization_kwargs: Any, *,
                                 enable_hf_prompt_update: bool):  # fmt: skip
        prompt_ids, processed, applied = super()._apply_hf_processor_main(
            prompt, mm_items, hf_processor_mm_kwargs, tokenization_kwargs, enable_hf_prompt_update=enable_hf_prompt_update
        )
        if isinstance(prompt, list) and not applied:
            image_token = self.info.get_hf_config().image_token_index
            applied = prompt_ids.count(image_token) > mm_items.get_count("image", strict=False)
        return prompt_ids, processed, applied


@MULTIMODAL_REGISTRY.register_processor(
    LlavaNextProcessorForExpandedPrompts, info=LlavaNextProcessingInfo, dummy_inputs=LlavaDummyInputsBuilder
)
class LlavaNextWithTransformers5Names(LlavaNextForConditionalGeneration):
    """vLLM's ``LlavaNextForConditionalGeneration`` taking transformers 5's weight names and verl's expanded prompts."""

    hf_to_vllm_mapper = (
        WeightsMapper(orig_to_new_regex={FLAT_CLIP_NAME: "vision_tower.vision_model."})
        | LlavaNextForConditionalGeneration.hf_to_vllm_mapper
    )
