"""Round trips through verl's own RLHFDataset and MultiTurnSFTDataset with the tiny Qwen2.5-VL processor.

For every row the image-token count of the tokenised prompt must equal the number of image features
the processor computes (``image_grid_thw`` / merge_size^2), and the later turns must reach the row dict
with their image bytes intact.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from verl.utils import hf_processor, hf_tokenizer
from verl.utils.dataset.multiturn_sft_dataset import MultiTurnSFTDataset
from verl.utils.dataset.rl_dataset import RLHFDataset

from am3_verl.data.cold_start import convert_cold_start
from am3_verl.data.intersafe_v import RL_SCHEMA, convert_intersafe_v
from am3_verl.data.safemt import convert_safemt
from am3_verl.dialogue import Dialogue

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def qwen(tiny_models_dir):
    path = str(tiny_models_dir / "qwen2_5_vl")
    return hf_tokenizer(path), hf_processor(path)


def _rl_config(tmp_path: Path):
    return OmegaConf.create(
        {
            "prompt_key": "prompt",
            "image_key": "images",
            "max_prompt_length": 8192,
            "filter_overlong_prompts": True,
            "filter_overlong_prompts_workers": None,  # in-process: a forked worker can hang on torch threads
            "cache_dir": str(tmp_path / "verl-cache"),
        }
    )


def _count_image_tokens(processor, messages, images) -> tuple[int, int, int]:
    """(image-pad tokens in the tokenised prompt, features from image_grid_thw, pixel rows / merge^2)."""
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[text], images=images, return_tensors="pt")
    pad_id = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    merge = processor.image_processor.merge_size
    grid = inputs["image_grid_thw"]
    n_tokens = int((inputs["input_ids"] == pad_id).sum())
    return n_tokens, int(grid.prod(-1).sum()) // merge**2, inputs["pixel_values"].shape[0] // merge**2


def _assert_prompt_images_match(processor, dataset: RLHFDataset, row: dict) -> int:
    messages = row["raw_prompt"]
    images, _, _ = RLHFDataset._process_multi_modal_info(messages, dataset.image_patch_size, dataset.config)
    n_images = sum(1 for m in messages if isinstance(m["content"], list) for c in m["content"] if c["type"] == "image")
    if n_images == 0:
        assert images is None
        return 0
    assert len(images) == n_images
    tokens, features, pixels = _count_image_tokens(processor, messages, images)
    assert tokens == features == pixels > 0
    return n_images


def test_intersafe_v_round_trip_through_rlhf_dataset(qwen, tmp_path, hf_cache, sample_copy):
    tokenizer, processor = qwen
    out = tmp_path / "rl"
    summary = convert_intersafe_v(sample_copy / "intersafe_v.jsonl", out, val_size=4, progress=False, workers=1)
    source = {
        d.id: d for d in (Dialogue.model_validate_json(line) for line in (sample_copy / "intersafe_v.jsonl").read_text().splitlines())
    }
    assert pq.read_schema(out / "rl_train.parquet").remove_metadata() == RL_SCHEMA
    seen = 0
    for split, expected in (("train", summary.counts.written["train"]), ("val", 4)):
        dataset = RLHFDataset(str(out / f"rl_{split}.parquet"), tokenizer, _rl_config(tmp_path), processor)
        assert len(dataset) == expected  # nothing filtered as over-long, nothing lost
        empty_first_turn = 0
        for i in range(len(dataset)):
            row = dataset[i]
            info = row["extra_info"]
            dialogue = source[info["id"]]
            assert info["split"] == split and info["num_turns"] == len(dialogue.turns)
            assert info["category"] == dialogue.category == row["reward_model"]["ground_truth"]
            assert info["harmful"] is (dialogue.category != "benign")
            assert info["reference_first_reply"] == dialogue.turns[0].assistant
            assert row["agent_name"] == "am3_dialogue" and row["data_source"] == "intersafe_v"
            assert row["index"] == info["index"]
            n_first = _assert_prompt_images_match(processor, dataset, row)
            assert n_first == len(dialogue.turns[0].images)
            empty_first_turn += n_first == 0
            # The later turns reach the agent loop's row dict intact, bytes included.
            later = row["am3_later_turns"]
            assert isinstance(later, list) and len(later) == len(dialogue.turns) - 1
            for turn, ref in zip(later, dialogue.turns[1:]):
                assert turn["user"] == ref.user and turn["assistant"] == ref.assistant
                assert [img["bytes"] for img in turn["images"]] == [(sample_copy / p).read_bytes() for p in ref.images]
                if turn["images"]:
                    pil = [Image.open(io.BytesIO(img["bytes"])).convert("RGB") for img in turn["images"]]
                    content = [{"type": "image", "image": im} for im in pil] + [{"type": "text", "text": turn["user"]}]
                    tokens, features, pixels = _count_image_tokens(processor, [{"role": "user", "content": content}], pil)
                    assert tokens == features == pixels > 0
            seen += 1
        if split == "train":
            assert empty_first_turn >= 1, "rows whose first turn has no image go through too"
    assert seen == 24


def test_safemt_and_refusal_eval_round_trip_through_rlhf_dataset(qwen, tmp_path, hf_cache, sample_copy):
    tokenizer, processor = qwen
    convert_safemt(sample_copy / "safemt.json", tmp_path / "safemt", progress=False, workers=1)
    dataset = RLHFDataset(str(tmp_path / "safemt" / "safemt.parquet"), tokenizer, _rl_config(tmp_path), processor)
    items = {item["id"]: item for item in json.loads((sample_copy / "safemt.json").read_text())}
    assert len(dataset) == len(items)
    for i in range(len(dataset)):
        row = dataset[i]
        item = items[row["id"]]
        assert _assert_prompt_images_match(processor, dataset, row) == 1
        assert [m["role"] for m in row["raw_prompt"]] == [m["role"] for m in item["dialogue"]]
        assert row["num_rounds"] == sum(m["role"] == "user" for m in item["dialogue"])
        assert row["history"] == [
            {"role": m["role"], "content": ("<image>\n" if k == 0 else "") + m["content"]} for k, m in enumerate(item["dialogue"][:-1])
        ]
        assert row["question"] == item["dialogue"][-1]["content"] and row["source_question"] == item["question"]
        assert row["scenario"] == item["scenario"] == row["reward_model"]["ground_truth"]

    convert_cold_start(sample_copy / "refusal_vqa.jsonl", tmp_path / "cs", val_size=3, progress=False, workers=1)
    dataset = RLHFDataset(str(tmp_path / "cs" / "refusal_eval.parquet"), tokenizer, _rl_config(tmp_path), processor)
    assert len(dataset) == 3
    for i in range(3):
        row = dataset[i]
        assert _assert_prompt_images_match(processor, dataset, row) == 1
        assert row["extra_info"]["reference_answer"].startswith("I'm sorry")


def test_cold_start_round_trip_through_multiturn_sft_dataset(qwen, tmp_path, sample_copy):
    tokenizer, processor = qwen
    convert_cold_start(
        sample_copy / "refusal_vqa.jsonl",
        tmp_path / "cs",
        general_path=sample_copy / "general.jsonl",
        general_ratio=0.5,
        system_prompt="You are a careful assistant.",
        progress=False,
        workers=1,
    )
    table = pq.read_table(tmp_path / "cs" / "cold_start.parquet").to_pylist()
    config = OmegaConf.create({"max_length": 2048, "truncation": "error", "messages_key": "messages", "image_key": "images"})
    dataset = MultiTurnSFTDataset(str(tmp_path / "cs" / "cold_start.parquet"), tokenizer, config, processor)
    assert len(dataset) == 12 + 6
    pad_id = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    merge = processor.image_processor.merge_size
    for i in range(len(dataset)):
        item = dataset[i]
        grid = item["multi_modal_inputs"]["image_grid_thw"]
        assert grid.shape[0] == 1
        assert int((item["input_ids"] == pad_id).sum()) == int(grid.prod(-1).sum()) // merge**2 > 0
        # The loss covers exactly the reference answer (and its end-of-turn token).
        trained = item["input_ids"][item["loss_mask"].bool()]
        answer = table[i]["messages"][-1]["content"]
        assert tokenizer.decode(trained).strip() == answer + "<|im_end|>"
        assert table[i]["messages"][0] == {"role": "system", "content": "You are a careful assistant."}
    kinds = [row["extra_info"]["kind"] for row in table]
    assert kinds == ["refusal"] * 12 + ["general"] * 6
    assert torch.is_tensor(dataset[0]["position_ids"])
