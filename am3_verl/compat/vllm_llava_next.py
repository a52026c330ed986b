"""vLLM 0.24's LLaVA-NeXT, taking the CLIP vision-tower weight names transformers 5 gives (see :mod:`.vllm_plugin`).

transformers 5's ``CLIPVisionModel`` has no ``vision_model`` submodule, so a LLaVA-NeXT trained with it
names its vision weights ``model.vision_tower.embeddings...``; vLLM 0.24 builds the tower as
``vision_tower.vision_model.embeddings...``. The names released checkpoints use already carry
``vision_model.`` and pass unchanged.
"""

from __future__ import annotations

import re

from vllm.model_executor.models.llava_next import LlavaNextForConditionalGeneration
from vllm.model_executor.models.utils import WeightsMapper

FLAT_CLIP_NAME = re.compile(r"^(?:model\.)?vision_tower\.(?!vision_model\.)")
"""A vision-tower weight name without the ``vision_model.`` level (transformers 5)."""


class LlavaNextWithTransformers5Names(LlavaNextForConditionalGeneration):
    """vLLM's ``LlavaNextForConditionalGeneration`` whose weight-name mapper also takes transformers 5's CLIP names."""

    hf_to_vllm_mapper = (
        WeightsMapper(orig_to_new_regex={FLAT_CLIP_NAME: "vision_tower.vision_model."})
        | LlavaNextForConditionalGeneration.hf_to_vllm_mapper
    )
