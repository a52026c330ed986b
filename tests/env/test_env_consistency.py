"""Rollout-vs-training consistency of the dialogue environment, through verl's own worker and post-processing.

A 4-turn dialogue with images in turns 1 and 3 is played by verl's ``AgentLoopWorker`` with the real
continuous-token builder and the tiny Qwen2.5-VL behind the local generation backend. The post-processed
batch is then run through the model the way verl's actor runs it (verl's position ids and
multi_modal_inputs), and its log-probs on policy tokens must match the rollout's sampled log-probs.
"""

import asyncio

import pytest
import torch
from transformers import AutoModelForImageTextToText
from verl.utils.model import extract_multi_modal_inputs

from am3_verl.local.generation import load_local_client
from am3_verl.local.rollout import compose_ppo_config, generate, load_rl_dataset, make_agent_loop_worker, rollout_batch
from am3_verl.turn_scores import turn_spans

from env_rows import FOUR_TURNS_IMAGES_IN_1_AND_3, dialogue_row

IMAGE_PAD = 151655


pytestmark = pytest.mark.slow  # plays a 4-turn image dialogue and replays it through the model


@pytest.fixture(scope="module")
def played(tiny_qwen_dir, tmp_path_factory):
    import pyarrow as pa
    import pyarrow.parquet as pq
    import yaml

    folder = tmp_path_factory.mktemp("consistency")
    data = folder / "rl.parquet"
    pq.write_table(pa.Table.from_pylist([dialogue_row(0, FOUR_TURNS_IMAGES_IN_1_AND_3)]), data)
    loops = folder / "loops.yaml"
    loops.write_text(
        yaml.safe_dump([{"name": "am3_dialogue", "_target_": "am3_verl.env.agent_loop.DialogueAgentLoop", "max_reply_tokens": 12}])
    )
    config = compose_ppo_config(tiny_qwen_dir, prompt_length=256, response_length=640, agent_loop_config_path=loops)
    client = load_local_client(str(tiny_qwen_dir), seed=1)
    worker = make_agent_loop_worker(config, client)
    batch = rollout_batch(load_rl_dataset([data], config), [0], n=2)
    return asyncio.run(generate(worker, batch)), client


def test_every_generate_call_got_its_images_as_expanded_tokens(played):
    _, client = played
    per_dialogue: dict[str, list[int]] = {}
    for call in client.calls:
        per_dialogue.setdefault(call.request_id, []).append(call.num_images)
    assert list(per_dialogue.values()) == [[1, 1, 2, 2]] * 2
    for call in client.calls:
        assert call.image_tokens == call.image_features > 0


def test_multi_modal_inputs_match_the_image_tokens(played):
    output, _ = played
    for row in range(len(output)):
        inputs = output.non_tensor_batch["multi_modal_inputs"][row]
        grid = inputs["image_grid_thw"]
        assert grid.shape[0] == 2
        features = int(grid.prod(dim=-1).sum()) // 4  # spatial merge 2x2
        assert int((output.batch["input_ids"][row] == IMAGE_PAD).sum()) == features
        assert inputs["pixel_values"].shape[0] == int(grid.prod(dim=-1).sum())


def test_masks_cover_exactly_the_policy_tokens(played, tiny_qwen_dir):
    from transformers import AutoTokenizer

    output, _ = played
    tokenizer = AutoTokenizer.from_pretrained(tiny_qwen_dir)
    responses, masks = output.batch["responses"], output.batch["response_mask"]
    attention = output.batch["attention_mask"][:, -responses.shape[1] :]
    for row in range(len(output)):
        records = output.non_tensor_batch["am3_turns"][row]
        assert len(records) == 4 and output.non_tensor_batch["am3_dialogue"][row]["stop_reason"] == "script_end"
        spans = turn_spans(masks[row])
        assert spans == [tuple(r["span"]) for r in records]
        for record, (start, end) in zip(records, spans):
            assert tokenizer.decode(responses[row, start:end], skip_special_tokens=True) == record["reply"]
        # user turns (with their image pads) and boundaries sit between the replies with mask 0
        between = responses[row, spans[1][1] : spans[2][0]]
        assert (between == IMAGE_PAD).sum() > 0 and masks[row, spans[1][1] : spans[2][0]].sum() == 0
        # the trailing slot: one mask-0 token after the last reply, inside the attention mask
        length = int(attention[row].sum())
        assert spans[-1][1] == length - 1 and masks[row, length - 1] == 0
        assert records[2]["user_images"] and records[1]["user_images"] == []


def test_training_forward_reproduces_the_rollout_log_probs(played, tiny_qwen_dir):
    output, _ = played
    model = AutoModelForImageTextToText.from_pretrained(tiny_qwen_dir, dtype=torch.float32).eval()
    response_length = output.batch["responses"].shape[1]
    for row in range(len(output)):
        # what verl's actor feeds the model: padded ids, attention mask, (4, bs, L) position ids, mm inputs
        position_ids = output.batch["position_ids"][row : row + 1].transpose(0, 1)
        mm = extract_multi_modal_inputs([output.non_tensor_batch["multi_modal_inputs"][row]])
        with torch.no_grad():
            logits = (
                model(
                    input_ids=output.batch["input_ids"][row : row + 1],
                    attention_mask=output.batch["attention_mask"][row : row + 1],
                    position_ids=position_ids,
                    **mm,
                )
                .logits[0, -response_length - 1 : -1]
                .float()
            )
        log_probs = torch.log_softmax(logits, dim=-1).gather(-1, output.batch["responses"][row][:, None]).squeeze(-1)
        mask = output.batch["response_mask"][row].bool()
        rollout = output.batch["rollout_log_probs"][row]
        assert mask.sum() > 20
        assert torch.allclose(log_probs[mask], rollout[mask], atol=1e-3), (log_probs[mask] - rollout[mask]).abs().max()
