"""am3_verl.compat: the version gate, the adapter registry guard, and the Qwen2-VL text-only fix against verl's bug."""

import pytest
import torch

from am3_verl import compat


def test_another_verl_version_is_refused_with_every_reach_listed(monkeypatch):
    monkeypatch.setattr(compat, "installed_verl_version", lambda: "0.9.2")
    with pytest.raises(compat.UnsupportedVerlVersion) as error:
        compat.check_verl_version()
    message = str(error.value)
    assert "0.9.2" in message and compat.VERL_VERSION in message
    for reach in compat.REACHES:
        assert reach in message


def test_the_installed_verl_is_the_supported_one():
    compat.check_verl_version()


def test_a_taken_rollout_adapter_name_is_never_overwritten():
    from verl.workers.rollout.base import _ROLLOUT_REGISTRY

    with pytest.raises(ValueError, match="already maps"):
        compat.register_rollout_adapter("vllm", "somewhere.Else")
    assert _ROLLOUT_REGISTRY[("vllm", "async")] == "verl.workers.rollout.vllm_rollout.ServerAdapter"


@pytest.fixture(scope="module")
def tiny_qwen_inner(tiny_qwen_dir):
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(tiny_qwen_dir, dtype=torch.float32).model.eval()


def test_verl_still_crashes_on_text_only_qwen2_vl_batches(tiny_qwen_inner):
    """Fails the day verl fixes models/transformers/qwen2_vl.py:393: then drop fix_qwen2_vl_text_only_batches."""
    from verl.models.transformers import qwen2_vl

    original = qwen2_vl._get_input_embeds.__wrapped__
    with pytest.raises(AttributeError, match="mean"):
        original(tiny_qwen_inner, torch.tensor([[9707, 1879]]))


def test_the_fix_embeds_text_only_batches(tiny_qwen_inner):
    from verl.models.transformers import qwen2_vl

    fixed = qwen2_vl._get_input_embeds
    assert getattr(fixed, "_am3_compat", False)  # applied by the plugin at `import verl`
    ids = torch.tensor([[9707, 1879, 151645]])
    embeds, mask = fixed(tiny_qwen_inner, ids, torch.ones_like(ids))
    torch.testing.assert_close(embeds, tiny_qwen_inner.get_input_embeddings()(ids))
    assert mask.shape == ids.shape
    # the vision tower takes part (zero-weighted), so every FSDP rank touches the same parameters
    embeds.sum().backward()
    assert any(p.grad is not None for p in tiny_qwen_inner.visual.parameters())



def test_the_fix_hands_image_batches_to_verl_unchanged(tiny_qwen_inner, tiny_qwen_dir):
    from PIL import Image
    from transformers import AutoProcessor
    from verl.models.transformers import qwen2_vl

    processor = AutoProcessor.from_pretrained(tiny_qwen_dir)
    inputs = processor(text=["<|vision_start|><|image_pad|><|vision_end|>Hello"], images=[Image.new("RGB", (56, 56), "red")], return_tensors="pt")
    args = (tiny_qwen_inner, inputs["input_ids"], inputs["attention_mask"], inputs["pixel_values"], None, inputs["image_grid_thw"], None)
    with torch.no_grad():
        fixed, _ = qwen2_vl._get_input_embeds(*args)
        original, _ = qwen2_vl._get_input_embeds.__wrapped__(*args)
    torch.testing.assert_close(fixed, original, rtol=0, atol=0)
