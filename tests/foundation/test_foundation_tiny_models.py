"""The offline tiny models: real Qwen token ids, loadable by transformers and verl, runnable with images."""

import pytest
import torch
from PIL import Image
from transformers import AutoProcessor, AutoTokenizer, LlavaNextForConditionalGeneration, Qwen2_5_VLForConditionalGeneration

from am3_verl.local.tiny_models import QWEN2_5_VL_SPECIAL_TOKENS

THREE_TURN_CHAT = [
    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in this picture?"}]},
    {"role": "assistant", "content": [{"type": "text", "text": "A red square."}]},
    {"role": "user", "content": [{"type": "text", "text": "And in this one?"}, {"type": "image"}]},
    {"role": "assistant", "content": [{"type": "text", "text": "A green rectangle."}]},
    {"role": "user", "content": [{"type": "text", "text": "Which is larger?"}]},
]
IMAGES = [Image.new("RGB", (64, 48), (200, 10, 10)), Image.new("RGB", (90, 60), (10, 200, 10))]


pytestmark = pytest.mark.slow  # builds, loads and runs the tiny models


@pytest.mark.parametrize("name", ["qwen2_5_vl", "llava_next"])
def test_real_qwen_token_ids(tiny_models_dir, name):
    tokenizer = AutoTokenizer.from_pretrained(tiny_models_dir / name)
    assert tokenizer("Hello world")["input_ids"] == [9707, 1879]
    assert tokenizer("12345")["input_ids"] == [16, 17, 18, 19, 20]  # Qwen splits digits one by one
    for token_id, token in QWEN2_5_VL_SPECIAL_TOKENS:
        assert tokenizer.convert_tokens_to_ids(token) == token_id
    assert tokenizer.convert_tokens_to_ids("<|image_pad|>") == 151655
    assert tokenizer.eos_token_id == 151645 and tokenizer.pad_token_id == 151643
    text = "Safety first: <|im_start|>user\nÜber 9000 émojis 🙂<|im_end|>"
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text


def test_qwen_chat_template_renders_image_spans(tiny_qwen_dir):
    processor = AutoProcessor.from_pretrained(tiny_qwen_dir)
    text = processor.apply_chat_template(THREE_TURN_CHAT, add_generation_prompt=True, tokenize=False)
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n")
    assert text.count("<|vision_start|><|image_pad|><|vision_end|>") == 2
    assert text.endswith("<|im_start|>assistant\n")


@pytest.mark.parametrize(
    "name, model_cls", [("qwen2_5_vl", Qwen2_5_VLForConditionalGeneration), ("llava_next", LlavaNextForConditionalGeneration)]
)
def test_three_turn_two_image_chat_runs_forward_and_generate(tiny_models_dir, name, model_cls):
    processor = AutoProcessor.from_pretrained(tiny_models_dir / name)
    model = model_cls.from_pretrained(tiny_models_dir / name).eval()
    text = processor.apply_chat_template(THREE_TURN_CHAT, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[text], images=IMAGES, return_tensors="pt")
    image_token_id = getattr(model.config, "image_token_id", None) or model.config.image_token_index
    assert (inputs["input_ids"] == image_token_id).sum() > 2  # each image expanded to several tokens
    with torch.no_grad():
        logits = model(**inputs).logits
        generated = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert logits.shape[:2] == inputs["input_ids"].shape and torch.isfinite(logits).all()
    assert generated.shape[1] == inputs["input_ids"].shape[1] + 4


def test_verl_loads_the_tiny_qwen(tiny_qwen_dir):
    from verl.utils import hf_processor, hf_tokenizer

    tokenizer = hf_tokenizer(str(tiny_qwen_dir))
    processor = hf_processor(str(tiny_qwen_dir))
    assert tokenizer("Hello world")["input_ids"] == [9707, 1879]
    assert type(processor).__name__ == "Qwen2_5_VLProcessor"
    assert hasattr(processor, "get_rope_index")  # verl bound Qwen2.5-VL's M-RoPE index to it


def test_verl_loads_the_tiny_llava_tokenizer_and_processor_with_am3_support(tiny_llava_dir):
    # verl 0.9.1's hf_processor alone only knows Qwen-VL/GLM-4V/Gemma4/Mllama processors; am3-verl's
    # LLaVA-NeXT support (am3_verl.models, activated by the plugin) makes it return LLaVA-NeXT's processor.
    import am3_verl.models
    from verl.utils import hf_processor, hf_tokenizer

    am3_verl.models.register()
    assert hf_tokenizer(str(tiny_llava_dir))("Hello world")["input_ids"] == [9707, 1879]
    processor = hf_processor(str(tiny_llava_dir))
    assert type(processor).__name__ == "LlavaNextProcessor" and not hasattr(processor, "get_rope_index")
    with pytest.warns(UserWarning, match="Unsupported processor type: LlavaNextProcessor"):
        assert hf_processor.__wrapped__(str(tiny_llava_dir)) is None  # verl's own function, unchanged


def test_build_command_is_idempotent(tmp_path):
    from am3_verl.local.tiny_models import build_all

    first = build_all(tmp_path)
    stamp = (first["qwen2_5_vl"] / "config.json").stat().st_mtime_ns
    second = build_all(tmp_path)
    assert first == second and (second["qwen2_5_vl"] / "config.json").stat().st_mtime_ns == stamp
