"""Rollout-vs-training consistency of the dialogue environment on LLaVA-NeXT (mirror of the Qwen check).

Two 4-turn dialogues with images in turns 1 and 3, of sizes that tile into different crop counts, are
played by verl's ``AgentLoopWorker`` (continuous-token builder, post-processing) with the tiny LLaVA-NeXT
behind the local generation backend. Checked: image tokens = image features on every call; the token
layout equals the processor's chat template rendering of the same dialogue; ``multi_modal_inputs``
carries ``pixel_values`` and ``image_sizes``; 1-D position ids; and the training forward (verl's
``extract_multi_modal_inputs`` over the whole batch, as the actor batches it) reproduces the rollout
log-probs on policy tokens within 1e-3.
"""

import asyncio

import pytest
import torch
from transformers import AutoModelForImageTextToText
from verl.utils.model import extract_multi_modal_inputs

from am3_verl.local.generation import load_local_client
from am3_verl.local.rollout import compose_ppo_config, generate, load_rl_dataset, make_agent_loop_worker, rollout_batch
from am3_verl.turn_scores import turn_spans
from llava_rows import SMALL, SQUARE, TALL, WIDE, png

pytestmark = pytest.mark.slow


def dialogue_row(index, first_size, third_size):
    return {
        "prompt": [{"role": "user", "content": "<image>What does this picture show?"}],
        "images": [{"bytes": png((200, 30, 30), first_size)}],
        "am3_later_turns": [
            {"user": "Interesting. What is it usually used for?", "images": [], "assistant": None},
            {
                "user": "Here is a second one: <image> How is it made?",
                "images": [{"bytes": png((30, 200, 30), third_size)}],
                "assistant": None,
            },
            {"user": "Summarise both answers step by step.", "images": [], "assistant": None},
        ],
        "agent_name": "am3_dialogue",
        "data_source": "intersafe_v",
        "reward_model": {"style": "judge", "ground_truth": "weapons"},
        "extra_info": {"index": index, "id": f"dlg-{index}", "category": "weapons", "num_turns": 4, "harmful": True, "split": "train"},
    }


@pytest.fixture(scope="module")
def played(tiny_llava_dir, tmp_path_factory):
    import pyarrow as pa
    import pyarrow.parquet as pq
    import yaml

    folder = tmp_path_factory.mktemp("llava-consistency")
    data = folder / "rl.parquet"
    pq.write_table(pa.Table.from_pylist([dialogue_row(0, SQUARE, WIDE), dialogue_row(1, SMALL, TALL)]), data)
    loops = folder / "loops.yaml"
    loops.write_text(
        yaml.safe_dump([{"name": "am3_dialogue", "_target_": "am3_verl.env.agent_loop.DialogueAgentLoop", "max_reply_tokens": 12}])
    )
    config = compose_ppo_config(tiny_llava_dir, prompt_length=256, response_length=640, agent_loop_config_path=loops)
    client = load_local_client(str(tiny_llava_dir), seed=1)
    worker = make_agent_loop_worker(config, client)
    batch = rollout_batch(load_rl_dataset([data], config), [0, 1], n=2)
    return asyncio.run(generate(worker, batch)), client, worker


def test_every_generate_call_got_its_images_as_expanded_tokens(played):
    _, client, _ = played
    per_dialogue: dict[str, list[int]] = {}
    for call in client.calls:
        per_dialogue.setdefault(call.request_id, []).append(call.num_images)
    assert list(per_dialogue.values()) == [[1, 1, 2, 2]] * 4
    for call in client.calls:
        assert call.image_tokens == call.image_features > 0
    assert len({call.image_tokens for call in client.calls}) > 2  # the sizes tile differently


def test_multi_modal_inputs_carry_pixels_and_image_sizes(played, tiny_llava_dir):
    from verl.utils import hf_processor

    output, _, _ = played
    processor = hf_processor(str(tiny_llava_dir))
    for row in range(len(output)):
        inputs = output.non_tensor_batch["multi_modal_inputs"][row]
        assert set(inputs) == {"pixel_values", "image_sizes"}
        assert inputs["pixel_values"].shape[:2] == (2, 5) and inputs["image_sizes"].shape == (2, 2)
        expected = 0
        for size in inputs["image_sizes"].tolist():
            from PIL import Image

            probe = processor(text=["<image>"], images=[Image.new("RGB", (size[1], size[0]))], return_tensors="pt")
            expected += int((probe["input_ids"] == processor.image_token_id).sum())
        assert int((output.batch["input_ids"][row] == processor.image_token_id).sum()) == expected
    assert output.batch["position_ids"].dim() == 2  # 1-D positions per sample, no M-RoPE


def test_token_layout_is_the_chat_template_rendering_of_the_dialogue(played, tiny_llava_dir):
    from verl.utils import hf_processor

    output, _, worker = played
    processor = hf_processor(str(tiny_llava_dir))
    tokenizer = processor.tokenizer
    structural = {"<|im_start|>", "<|im_end|>", processor.image_token}
    sampled_only = [t.content for t in tokenizer.added_tokens_decoder.values() if t.content not in structural]
    for row in range(len(output)):
        records = output.non_tensor_batch["am3_turns"][row]
        messages = []
        for record in records:
            content = []
            for i, part in enumerate(record["user_text"].split("<image>")):
                if i:
                    content.append({"type": "image"})
                if part:
                    content.append({"type": "text", "text": part})
            messages.append({"role": "user", "content": content})
            messages.append({"role": "assistant", "content": [{"type": "text", "text": record["reply"]}]})
        expected = processor.apply_chat_template(messages, tokenize=False)
        ids = output.batch["input_ids"][row][output.batch["attention_mask"][row].bool()].tolist()
        collapsed = [t for i, t in enumerate(ids) if t != processor.image_token_id or ids[i - 1] != t]
        text = tokenizer.decode(collapsed[:-1])  # the trailing score slot is not part of the template
        # The random policy may sample any added token (e.g. <|vision_end|>) inside a reply; the environment
        # records the reply's text without them, so they are not in the template's rendering either.
        for token in sampled_only:
            text = text.replace(token, "")
        # the template closes every reply with "<|im_end|>\n"; the rollout's last reply has no newline after
        # it, and no end-of-turn token at all when it was cut by max_reply_tokens
        expected = expected.removesuffix("\n").removesuffix("<|im_end|>" if records[-1]["truncated"] else "")
        assert text == expected
        assert "<|im_end|><|im_start|>" not in text


def test_masks_cover_exactly_the_policy_tokens(played, tiny_llava_dir):
    from transformers import AutoTokenizer

    output, _, _ = played
    tokenizer = AutoTokenizer.from_pretrained(tiny_llava_dir)
    responses, masks = output.batch["responses"], output.batch["response_mask"]
    for row in range(len(output)):
        records = output.non_tensor_batch["am3_turns"][row]
        assert len(records) == 4 and output.non_tensor_batch["am3_dialogue"][row]["stop_reason"] == "script_end"
        spans = turn_spans(masks[row])
        assert spans == [tuple(r["span"]) for r in records]
        for record, (start, end) in zip(records, spans):
            assert tokenizer.decode(responses[row, start:end], skip_special_tokens=True) == record["reply"]


def test_training_forward_over_the_batch_reproduces_the_rollout_log_probs(played, tiny_llava_dir):
    output, _, _ = played
    model = AutoModelForImageTextToText.from_pretrained(tiny_llava_dir, dtype=torch.float32).eval()
    response_length = output.batch["responses"].shape[1]
    # what verl's actor feeds the model: the whole padded micro-batch, 1-D position ids, merged mm inputs
    mm = extract_multi_modal_inputs(list(output.non_tensor_batch["multi_modal_inputs"]))
    assert mm["pixel_values"].shape[:2] == (2 * len(output), 5)
    with torch.no_grad():
        logits = (
            model(
                input_ids=output.batch["input_ids"],
                attention_mask=output.batch["attention_mask"],
                position_ids=output.batch["position_ids"],
                **mm,
            )
            .logits[:, -response_length - 1 : -1]
            .float()
        )
    log_probs = torch.log_softmax(logits, dim=-1).gather(-1, output.batch["responses"][..., None]).squeeze(-1)
    mask = output.batch["response_mask"].bool()
    rollout = output.batch["rollout_log_probs"]
    assert mask.sum() > 40
    assert torch.allclose(log_probs[mask], rollout[mask], atol=1e-3), (log_probs[mask] - rollout[mask]).abs().max()
