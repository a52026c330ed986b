"""verl's ``hf_processor`` gives a usable LLaVA-NeXT processor once am3-verl's support is registered.

Covers every binding verl reads, the no-op for other processors, the fixed crop count (same image tokens
and logits as the stock processor, concatenable across samples) and plain saved checkpoints.
"""

import json

import pytest
import torch
from transformers import AutoProcessor, LlavaNextForConditionalGeneration
from verl.utils.model import extract_multi_modal_inputs

from am3_verl.models import llava_next
from llava_rows import SMALL, SQUARE, TALL, WIDE, image

SIZES = [SMALL, SQUARE, WIDE, TALL]


pytestmark = pytest.mark.slow  # loads LLaVA-NeXT processors and runs the tiny model


@pytest.mark.parametrize("module", ["verl.utils", "verl.utils.tokenizer", "verl.utils.tokenizer.tokenizer", "verl.workers.config.model"])
def test_every_verl_binding_returns_the_llava_processor(tiny_llava_dir, module):
    import importlib

    hf_processor = importlib.import_module(module).hf_processor
    processor = hf_processor(str(tiny_llava_dir))
    assert type(processor).__name__ == "LlavaNextProcessor"
    assert processor.config.model_type == "llava_next"
    assert not hasattr(processor, "get_rope_index")  # 1-D positions: verl computes them from the mask
    assert processor.image_processor.patch_size == 14


def test_hf_model_config_carries_the_llava_processor(tiny_llava_dir):
    from verl.workers.config import HFModelConfig

    config = HFModelConfig(path=str(tiny_llava_dir))
    assert type(config.processor).__name__ == "LlavaNextProcessor"


def test_other_processors_go_through_verl_unchanged(tiny_qwen_dir, tmp_path):
    from verl.utils import hf_processor

    processor = hf_processor(str(tiny_qwen_dir))
    assert type(processor).__name__ == "Qwen2_5_VLProcessor" and hasattr(processor, "get_rope_index")
    assert type(processor.image_processor).__mro__[1].__name__ != "_FixedPatchCount"
    assert hf_processor.__wrapped__(str(tiny_qwen_dir)).__class__ is type(processor)
    with pytest.warns(UserWarning, match="Failed to create processor"):
        assert hf_processor(str(tmp_path)) is None  # not a model folder: verl's own answer


def test_register_is_idempotent_and_keeps_one_wrapper():
    import verl.utils
    import verl.utils.tokenizer.tokenizer as defining

    before = defining.hf_processor
    llava_next.register()
    llava_next.register()
    assert defining.hf_processor is before is verl.utils.hf_processor
    assert not getattr(before.__wrapped__, "_am3_compat", False)


def test_every_image_gets_the_maximal_crop_count_and_the_same_tokens(tiny_llava_dir):
    from verl.utils import hf_processor

    fixed, stock = hf_processor(str(tiny_llava_dir)), AutoProcessor.from_pretrained(tiny_llava_dir)
    assert llava_next.max_num_patches(fixed.image_processor) == 5  # base crop + 2x2 grid of the 56x56 pinpoint
    counts = set()
    for size in SIZES:
        images = [image((10, 120, 200), size)]
        ours = fixed(text=["<image>Describe."], images=images, return_tensors="pt")
        theirs = stock(text=["<image>Describe."], images=images, return_tensors="pt")
        counts.add(theirs["pixel_values"].shape[1])
        assert ours["pixel_values"].shape[1] == 5
        assert torch.equal(ours["input_ids"], theirs["input_ids"])  # image tokens unchanged
        assert torch.equal(ours["pixel_values"][:, : theirs["pixel_values"].shape[1]], theirs["pixel_values"])
    assert len(counts) > 1  # the sizes really tile differently


def test_padded_crops_do_not_change_the_logits(tiny_llava_dir):
    from verl.utils import hf_processor

    fixed, stock = hf_processor(str(tiny_llava_dir)), AutoProcessor.from_pretrained(tiny_llava_dir)
    model = LlavaNextForConditionalGeneration.from_pretrained(tiny_llava_dir, dtype=torch.float32).eval()
    images = [image((200, 30, 30), SMALL)]
    with torch.no_grad():
        ours = model(**fixed(text=["<image>What is it?"], images=images, return_tensors="pt")).logits
        theirs = model(**stock(text=["<image>What is it?"], images=images, return_tensors="pt")).logits
    assert torch.allclose(ours, theirs, atol=1e-6)


def test_samples_with_different_tilings_concatenate_like_verl_batches_them(tiny_llava_dir):
    from verl.utils import hf_processor

    fixed, stock = hf_processor(str(tiny_llava_dir)), AutoProcessor.from_pretrained(tiny_llava_dir)

    def per_sample(processor):
        out = []
        for size in (SMALL, SQUARE):
            inputs = processor(text=["<image>Hi"], images=[image((1, 2, 3), size)], return_tensors="pt")
            out.append({"pixel_values": inputs["pixel_values"], "image_sizes": inputs["image_sizes"]})
        return out

    with pytest.raises(RuntimeError, match="Failed to concatenate multi-modal input 'pixel_values'"):
        extract_multi_modal_inputs(per_sample(stock))  # why the fixed crop count exists
    merged = extract_multi_modal_inputs(per_sample(fixed))
    assert merged["pixel_values"].shape[:2] == (2, 5) and merged["image_sizes"].tolist() == [[20, 20], [64, 64]]


def test_saved_processor_is_a_plain_hugging_face_one(tiny_llava_dir, tmp_path):
    from verl.utils import hf_processor

    hf_processor(str(tiny_llava_dir)).save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "processor_config.json").read_text())["image_processor"]
    assert saved["image_processor_type"] == "LlavaNextImageProcessor"
    assert not any(key.startswith("_am3") or key == "patch_size" for key in saved)
    assert type(AutoProcessor.from_pretrained(tmp_path).image_processor).__mro__[1].__name__ == "TorchvisionBackend"


def test_a_processor_without_pinpoints_is_refused():
    class NotLlava:
        crop_size = {"height": 28}

        def _pad_for_batching(self, values):
            return values

    with pytest.raises(ValueError, match="no image_grid_pinpoints"):
        llava_next.fix_patch_count(NotLlava())
