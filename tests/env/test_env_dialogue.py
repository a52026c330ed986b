"""The dialogue environment's turn logic: budgets, images that do not fit, empty replies, simulated users.

Generation is the canned backend (a script of token ids, answered instantly) so each case is exact; the
tokenizer, processor and continuous-token builder are the tiny Qwen2.5-VL's, run by verl's own
``AgentLoopWorker``.
"""

import asyncio

import pytest
from hydra.errors import InstantiationException

from canned_generation import CannedGenerationClient
from am3_verl.testing.openai_server import FaultPlan, LoopbackOpenAIServer, constant_responder
from am3_verl.local.rollout import compose_ppo_config, generate, load_rl_dataset, make_agent_loop_worker, rollout_batch
from am3_verl.turn_scores import TurnScores, decode_batch, encode_row, turn_spans
from env_rows import dialogue_row, png

IM_END, HELLO, WORLD, IMAGE_PAD = 151645, 9707, 1879, 151655
FOUR_TEXT_TURNS = [("First question?", []), ("Second question?", []), ("Third question?", []), ("Fourth question?", [])]


pytestmark = pytest.mark.slow  # each case builds verl's AgentLoopWorker (seconds apiece)


def play(tiny_qwen_dir, write_rl_parquet, agent_loop_yaml, rows, client, *, response_length, n=1, **loop_kwargs):
    config = compose_ppo_config(
        tiny_qwen_dir, prompt_length=256, response_length=response_length, agent_loop_config_path=agent_loop_yaml(**loop_kwargs)
    )
    dataset = load_rl_dataset([write_rl_parquet(rows)], config)
    worker = make_agent_loop_worker(config, client)
    return asyncio.run(generate(worker, rollout_batch(dataset, list(range(len(rows))), n=n)))


def test_full_script_is_replayed_with_masks_and_slot(tiny_qwen_dir, write_rl_parquet, agent_loop_yaml):
    client = CannedGenerationClient([[HELLO, WORLD, IM_END]])
    out = play(tiny_qwen_dir, write_rl_parquet, agent_loop_yaml, [dialogue_row(0, FOUR_TEXT_TURNS)], client, response_length=256)
    records, info = out.non_tensor_batch["am3_turns"][0], out.non_tensor_batch["am3_dialogue"][0]
    assert info["stop_reason"] == "script_end" and not info["truncated"] and info["assistant_turns"] == 4
    assert [r["reply"] for r in records] == ["Hello world"] * 4
    assert [r["user_text"] for r in records] == [t for t, _ in FOUR_TEXT_TURNS]
    mask = out.batch["response_mask"][0]
    assert turn_spans(mask) == [tuple(r["span"]) for r in records]
    assert all(end - start == 3 for start, end in turn_spans(mask))
    assert out.non_tensor_batch["turn_scores"][0] == [] and out.non_tensor_batch["tool_rewards"][0] == []
    assert out.non_tensor_batch["min_global_steps"][0] == 0 and out.non_tensor_batch["max_global_steps"][0] == 0
    # per-turn max_tokens come from the remaining budget, one slot kept free
    assert client.calls[0]["max_tokens"] == 255
    assert all(a["max_tokens"] > b["max_tokens"] for a, b in zip(client.calls, client.calls[1:]))


def test_a_reply_that_exhausts_the_budget_ends_the_dialogue(tiny_qwen_dir, write_rl_parquet, agent_loop_yaml):
    client = CannedGenerationClient([[HELLO, WORLD, IM_END], [HELLO] * 500])
    out = play(tiny_qwen_dir, write_rl_parquet, agent_loop_yaml, [dialogue_row(0, FOUR_TEXT_TURNS)], client, response_length=64)
    records, info = out.non_tensor_batch["am3_turns"][0], out.non_tensor_batch["am3_dialogue"][0]
    assert info["stop_reason"] == "budget" and info["truncated"]
    assert [r["truncated"] for r in records] == [False, True]
    assert int(out.batch["attention_mask"][0, -64:].sum()) == 64  # replies used every slot but the last
    assert out.batch["response_mask"][0, -1] == 0


def test_truncation_at_a_turn_boundary_keeps_whole_turns(tiny_qwen_dir, write_rl_parquet, agent_loop_yaml):
    # Budget for two replies and one user turn; the second user turn does not fit and is dropped whole.
    client = CannedGenerationClient([[HELLO, WORLD, IM_END]])
    out = play(tiny_qwen_dir, write_rl_parquet, agent_loop_yaml, [dialogue_row(0, FOUR_TEXT_TURNS)], client, response_length=24)
    info = out.non_tensor_batch["am3_dialogue"][0]
    assert info["stop_reason"] == "budget" and info["truncated"]
    assert info["assistant_turns"] == 2 and info["user_turns"] == 1 and info["dropped_user_turn_tokens"] > 0
    records = out.non_tensor_batch["am3_turns"][0]
    assert not any(r["truncated"] for r in records)


def test_an_image_turn_that_does_not_fit_is_never_cut(tiny_qwen_dir, write_rl_parquet, agent_loop_yaml):
    turns = [("Describe the scene.", []), ("Now this one: <image> what is it?", [png((10, 10, 200), (112, 112))])]
    client = CannedGenerationClient([[HELLO, WORLD, IM_END]])
    out = play(tiny_qwen_dir, write_rl_parquet, agent_loop_yaml, [dialogue_row(0, turns)], client, response_length=20)
    info = out.non_tensor_batch["am3_dialogue"][0]
    assert info["stop_reason"] == "budget" and info["dropped_user_turn_tokens"] > 16  # 16 image tokens + text
    assert int((out.batch["responses"][0] == IMAGE_PAD).sum()) == 0
    assert "multi_modal_inputs" not in out.non_tensor_batch or not out.non_tensor_batch["multi_modal_inputs"][0]
    assert [c["num_images"] for c in client.calls] == [0]


def test_empty_replies_are_recorded_and_the_dialogue_goes_on(tiny_qwen_dir, write_rl_parquet, agent_loop_yaml):
    client = CannedGenerationClient([[IM_END]])
    out = play(tiny_qwen_dir, write_rl_parquet, agent_loop_yaml, [dialogue_row(0, FOUR_TEXT_TURNS)], client, response_length=128)
    records = out.non_tensor_batch["am3_turns"][0]
    assert [r["empty"] for r in records] == [True] * 4 and [r["reply"] for r in records] == [""] * 4
    mask = out.batch["response_mask"][0]
    assert [end - start for start, end in turn_spans(mask)] == [1, 1, 1, 1]
    # one-token turns still carry both scores exactly (see am3_verl.turn_scores)
    scores = TurnScores(harmless=[0.25, 1.0, 0.0, 0.5], helpful=[0.75, 0.0, 1.0, 0.125], failed=[False, False, True, False])
    row = encode_row(mask, scores)
    decoded = decode_batch(row[None], mask[None])
    assert decoded.harmless[0].tolist() == [0.25, 1.0, 0.0, 0.5] and decoded.helpful[0].tolist() == [0.75, 0.0, 0.0, 0.125]
    assert decoded.valid[0].tolist() == [True, True, False, True]


def test_max_reply_tokens_closes_the_cut_reply_and_continues(tiny_qwen_dir, write_rl_parquet, agent_loop_yaml):
    client = CannedGenerationClient([[HELLO] * 50])
    out = play(
        tiny_qwen_dir,
        write_rl_parquet,
        agent_loop_yaml,
        [dialogue_row(0, FOUR_TEXT_TURNS)],
        client,
        response_length=256,
        max_reply_tokens=5,
    )
    records, info = out.non_tensor_batch["am3_turns"][0], out.non_tensor_batch["am3_dialogue"][0]
    assert info["stop_reason"] == "script_end" and [r["truncated"] for r in records] == [True] * 4
    responses, mask = out.batch["responses"][0], out.batch["response_mask"][0]
    for start, end in turn_spans(mask)[:-1]:
        assert end - start == 5 and responses[end] == IM_END and mask[end] == 0  # closing token, not trained


def test_max_turns_stops_a_longer_script(tiny_qwen_dir, write_rl_parquet, agent_loop_yaml):
    client = CannedGenerationClient([[HELLO, IM_END]])
    out = play(
        tiny_qwen_dir, write_rl_parquet, agent_loop_yaml, [dialogue_row(0, FOUR_TEXT_TURNS)], client, response_length=256, max_turns=2
    )
    info = out.non_tensor_batch["am3_dialogue"][0]
    assert info["stop_reason"] == "max_turns" and info["assistant_turns"] == 2


def test_simulated_user_writes_the_later_turns(tiny_qwen_dir, write_rl_parquet, agent_loop_yaml):
    image = png((200, 200, 10))
    rows = [dialogue_row(0, [("<image>What tools are shown here?", [image]), ("scripted second turn", [])])]
    client = CannedGenerationClient([[HELLO, WORLD, IM_END]])
    with LoopbackOpenAIServer(responder=constant_responder("And how would someone use them?")) as server:
        out = play(
            tiny_qwen_dir, write_rl_parquet, agent_loop_yaml, rows, client, response_length=512,
            user_source="simulate", max_turns=3, simulator={"endpoint": {"base_url": server.base_url, "model": server.model}, "goal": "misuse of tools"},
        )  # fmt: skip
        requests = [r.body for r in server.last_requests()]
    records, info = out.non_tensor_batch["am3_turns"][0], out.non_tensor_batch["am3_dialogue"][0]
    assert info["stop_reason"] == "max_turns" and info["assistant_turns"] == 3
    assert [r["user_source"] for r in records] == ["dataset", "simulator", "simulator"]
    assert [r["user_text"] for r in records][1:] == ["And how would someone use them?"] * 2
    first = requests[0]["messages"]
    assert "misuse of tools" in first[0]["content"]
    assert first[1]["role"] == "assistant" and first[1]["content"][1]["image_url"]["url"].startswith("data:image/png;base64,")
    assert first[2] == {"role": "user", "content": "Hello world"}


def test_hybrid_replays_then_simulates(tiny_qwen_dir, write_rl_parquet, agent_loop_yaml):
    rows = [dialogue_row(0, FOUR_TEXT_TURNS[:2])]
    client = CannedGenerationClient([[HELLO, IM_END]])
    with LoopbackOpenAIServer(responder=constant_responder("Go on.")) as server:
        out = play(
            tiny_qwen_dir, write_rl_parquet, agent_loop_yaml, rows, client, response_length=256,
            user_source="hybrid", max_turns=4, simulator={"endpoint": {"base_url": server.base_url, "model": server.model}},
        )  # fmt: skip
    records = out.non_tensor_batch["am3_turns"][0]
    assert [r["user_text"] for r in records] == ["First question?", "Second question?", "Go on.", "Go on."]


@pytest.mark.parametrize("fault", ["http_500", "timeout"])
def test_simulator_failure_ends_the_dialogue_cleanly(tiny_qwen_dir, write_rl_parquet, agent_loop_yaml, fault):
    rows = [dialogue_row(0, FOUR_TEXT_TURNS[:1])]
    client = CannedGenerationClient([[HELLO, IM_END]])
    plan = FaultPlan(schedule=lambda i, body: fault, hang_s=5.0)
    with LoopbackOpenAIServer(responder=constant_responder("unused"), faults=plan) as server:
        out = play(
            tiny_qwen_dir, write_rl_parquet, agent_loop_yaml, rows, client, response_length=256, n=2,
            user_source="simulate", max_turns=3,
            simulator={"endpoint": {"base_url": server.base_url, "model": server.model, "timeout_s": 0.5, "max_attempts": 2}},
        )  # fmt: skip
    for info in out.non_tensor_batch["am3_dialogue"]:
        assert info["stop_reason"] == "simulator_failed" and info["simulator_failed"]
        assert info["simulator_error"] == ("http_5xx" if fault == "http_500" else "timeout")
        assert info["assistant_turns"] == 1


def test_bad_script_rows_name_the_dialogue_and_turn(tiny_qwen_dir, write_rl_parquet, agent_loop_yaml):
    row = dialogue_row(7, FOUR_TEXT_TURNS[:2])
    row["am3_later_turns"][0]["user"] = "two placeholders <image><image> but no image"
    client = CannedGenerationClient([[HELLO, IM_END]])
    with pytest.raises(ValueError, match=r"dialogue 'dlg-7', am3_later_turns\[0\]: .*2 <image> placeholder"):
        play(tiny_qwen_dir, write_rl_parquet, agent_loop_yaml, [row], client, response_length=128)


def test_simulate_without_max_turns_is_a_config_error(tiny_qwen_dir, write_rl_parquet, agent_loop_yaml):
    client = CannedGenerationClient([[HELLO, IM_END]])
    with pytest.raises(InstantiationException, match="needs max_turns"):  # hydra wraps the ValueError
        play(
            tiny_qwen_dir,
            write_rl_parquet,
            agent_loop_yaml,
            [dialogue_row(0, FOUR_TEXT_TURNS)],
            client,
            response_length=64,
            user_source="simulate",
        )


def test_tiny_llava_plays_an_image_dialogue(tiny_llava_dir, write_rl_parquet, agent_loop_yaml):
    import am3_verl.models

    am3_verl.models.register()  # also done by the plugin entry point
    turns = [("<image>What is this?", [png((200, 30, 30))]), ("And this one? <image>", [png((30, 200, 30), (96, 40))])]
    client = CannedGenerationClient([[HELLO, WORLD, IM_END]])
    out = play(tiny_llava_dir, write_rl_parquet, agent_loop_yaml, [dialogue_row(0, turns)], client, response_length=256)
    records, info = out.non_tensor_batch["am3_turns"][0], out.non_tensor_batch["am3_dialogue"][0]
    assert info["stop_reason"] == "script_end" and [r["reply"] for r in records] == ["Hello world"] * 2
    assert [c["num_images"] for c in client.calls] == [1, 2]
    inputs = out.non_tensor_batch["multi_modal_inputs"][0]
    assert set(inputs) == {"pixel_values", "image_sizes"} and inputs["image_sizes"].shape == (2, 2)
    image_token = 151665  # LLaVA's <image>, after Qwen's specials
    between = out.batch["responses"][0, records[0]["span"][1] : records[1]["span"][0]]
    assert (between == image_token).sum() > 0 and between[0] == 198  # "\n" after the reply's <|im_end|>, as the template renders
