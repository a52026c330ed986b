"""The local generation backend honours verl's server-manager contract with correct log-probs."""

import asyncio

import pytest
import torch
from PIL import Image
from verl.workers.rollout.replica import TokenOutput

from am3_verl.local.generation import load_local_client

CHAT = [
    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]},
    {"role": "assistant", "content": [{"type": "text", "text": "A red square."}]},
    {"role": "user", "content": [{"type": "text", "text": "And this?"}, {"type": "image"}]},
]
IMAGES = [Image.new("RGB", (64, 48), (200, 10, 10)), Image.new("RGB", (90, 60), (10, 200, 10))]


pytestmark = pytest.mark.slow  # generates with the tiny models


def _prompt(client):
    text = client.processor.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False)
    return client.processor(text=[text], images=IMAGES, return_tensors="pt")


def _teacher_forced_log_probs(client, inputs, token_ids, temperature):
    full = torch.tensor([inputs["input_ids"][0].tolist() + token_ids])
    vision = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask")}
    if "mm_token_type_ids" in vision:
        pad = torch.zeros(1, len(token_ids), dtype=torch.long)
        vision["mm_token_type_ids"] = torch.cat([vision["mm_token_type_ids"], pad], dim=1)
    with torch.no_grad():
        logits = client.model(input_ids=full, attention_mask=torch.ones_like(full), **vision).logits[0].float()
    start = inputs["input_ids"].shape[1] - 1
    log_probs = torch.log_softmax(logits[start:-1] / temperature, dim=-1)
    return log_probs.gather(-1, torch.tensor(token_ids)[:, None]).squeeze(-1)


@pytest.mark.parametrize("name", ["qwen2_5_vl", "llava_next"])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_log_probs_are_those_of_the_sampled_tokens(tiny_models_dir, name, temperature):
    client = load_local_client(str(tiny_models_dir / name), seed=0, global_steps=3)
    inputs = _prompt(client)
    output = asyncio.run(
        client.generate(
            "req-1",
            prompt_ids=inputs["input_ids"][0].tolist(),
            sampling_params={"temperature": temperature, "top_p": 1.0, "top_k": -1, "max_tokens": 6, "logprobs": True},
            image_data=IMAGES,
        )
    )
    assert isinstance(output, TokenOutput)
    assert len(output.token_ids) == len(output.log_probs) == 6
    expected = _teacher_forced_log_probs(client, inputs, output.token_ids, temperature)
    assert torch.allclose(torch.tensor(output.log_probs), expected, atol=1e-4)
    assert output.extra_fields["min_global_steps"] == output.extra_fields["max_global_steps"] == 3
    call = client.calls[-1]
    assert call.num_images == 2 and call.image_tokens == call.image_features > 0


def test_greedy_is_deterministic_and_scored_at_temperature_one(tiny_qwen_dir):
    client = load_local_client(str(tiny_qwen_dir))
    inputs = _prompt(client)
    params = {"temperature": 0.0, "max_tokens": 5}
    ids = inputs["input_ids"][0].tolist()
    first = asyncio.run(client.generate("a", prompt_ids=ids, sampling_params=params, image_data=IMAGES))
    second = asyncio.run(client.generate("b", prompt_ids=ids, sampling_params=params, image_data=IMAGES))
    assert first.token_ids == second.token_ids
    expected = _teacher_forced_log_probs(client, inputs, first.token_ids, 1.0)
    assert torch.allclose(torch.tensor(first.log_probs), expected, atol=1e-4)


def test_seeded_samples_do_not_depend_on_the_order_requests_arrive(tiny_qwen_dir):
    """A batch of agent loops interleaves its requests differently on every run; the samples must not change."""
    params = {"temperature": 1.0, "max_tokens": 6}

    def play(order, seed=7, steps=(0,)):
        """One run: a fresh client (as each main_ppo run starts one) serving ``order`` at each weight version."""
        client = load_local_client(str(tiny_qwen_dir), seed=seed)
        ids = _prompt(client)["input_ids"][0].tolist()
        other = client.tokenizer("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")["input_ids"]
        replies = {}
        for step in steps:
            client.global_steps = step
            for name in order:  # "a0", "a1": the same image prompt twice (a GRPO group); "b": another prompt
                prompt, images = (other, None) if name == "b" else (ids, IMAGES)
                output = asyncio.run(client.generate(name, prompt_ids=prompt, sampling_params=params, image_data=images))
                replies[step, name] = output.token_ids
        return replies

    forward, backward = play(["a0", "a1", "b"], steps=(0, 1)), play(["b", "a1", "a0"], steps=(0, 1))
    for step in (0, 1):
        assert forward[step, "b"] == backward[step, "b"]
        # equal requests are interchangeable: the group receives the same two samples, whichever came first
        assert sorted([forward[step, "a0"], forward[step, "a1"]]) == sorted([backward[step, "a0"], backward[step, "a1"]])
        assert forward[step, "a0"] != forward[step, "a1"]  # a group's rollouts are still different samples
    assert forward[0, "b"] != forward[1, "b"]  # new weights (the next step) draw new samples
    assert play(["a0", "a1", "b"], seed=8)[0, "b"] != forward[0, "b"]


def test_stops_after_the_end_of_turn_token(tiny_qwen_dir):
    client = load_local_client(str(tiny_qwen_dir))
    eos = client.tokenizer.convert_tokens_to_ids("<|im_end|>")
    bias = torch.zeros(client.model.config.text_config.vocab_size)
    bias[eos] = 100.0  # make the tiny model choose <|im_end|> first
    client.model.lm_head.register_forward_hook(lambda module, args, out: out + bias)
    ids = client.tokenizer("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")["input_ids"]
    output = asyncio.run(client.generate("c", prompt_ids=ids, sampling_params={"temperature": 1.0, "max_tokens": 8}))
    assert output.token_ids == [eos]
    assert output.log_probs[0] == pytest.approx(0.0, abs=1e-4)


def test_image_token_mismatch_is_a_clear_error(tiny_qwen_dir):
    client = load_local_client(str(tiny_qwen_dir))
    inputs = _prompt(client)
    with pytest.raises(ValueError, match="image tokens but the 1 image"):
        asyncio.run(
            client.generate("d", prompt_ids=inputs["input_ids"][0].tolist(), sampling_params={"max_tokens": 2}, image_data=IMAGES[:1])
        )
    with pytest.raises(ValueError, match="no image_data"):
        asyncio.run(client.generate("e", prompt_ids=inputs["input_ids"][0].tolist(), sampling_params={"max_tokens": 2}))


def test_image_placeholder_tokens_are_never_sampled(tiny_qwen_dir):
    """A placeholder the policy wrote would claim an image that does not exist: the backend never samples one."""
    import asyncio

    import torch

    from am3_verl.local.generation import load_local_client

    client = load_local_client(str(tiny_qwen_dir), seed=0)
    image_pad, video_pad = 151655, 151656
    assert client.suppressed_token_ids == [image_pad, video_pad]
    with torch.no_grad():  # make <|image_pad|> the model's favourite next token everywhere
        client.model.lm_head.weight[image_pad] = client.model.lm_head.weight[image_pad] * 0 + 5.0
        client.model.lm_head.weight[image_pad] *= torch.sign(client.model.lm_head.weight.sum(0) + 1e-9)
    prompt = [151644, 872, 198, 9707, 1879, 151645, 198, 151644, 77091, 198]
    params = {"temperature": 0.0, "max_tokens": 8}
    out = asyncio.run(client.generate("r", prompt_ids=prompt, sampling_params=params))
    assert image_pad not in out.token_ids and len(out.token_ids) > 0


def _requests(client):
    """Eight concurrent requests of a step: a group of four equal image prompts, text prompts with other settings."""
    image_prompt = _prompt(client)["input_ids"][0].tolist()
    hi = client.tokenizer("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")["input_ids"]
    long = client.tokenizer("<|im_start|>user\nname three colours of the rainbow<|im_end|>\n<|im_start|>assistant\n")["input_ids"]
    sampled = {"temperature": 1.0, "max_tokens": 6}
    return [
        *[(f"group-{i}", image_prompt, sampled, IMAGES) for i in range(4)],
        ("hi", hi, {"temperature": 0.7, "top_k": 20, "max_tokens": 5}, None),
        ("long", long, {"temperature": 1.0, "top_p": 0.9, "max_tokens": 8}, None),
        ("greedy", long, {"temperature": 0.0, "max_tokens": 4}, None),
        ("short", hi, sampled | {"max_tokens": 2}, None),
    ]


def _serve(client, requests, concurrently: bool):
    async def one(name, prompt, params, images):
        return name, await client.generate(name, prompt_ids=prompt, sampling_params=params, image_data=images)

    async def together():
        return await asyncio.gather(*(one(*r) for r in requests))

    outputs = asyncio.run(together()) if concurrently else [asyncio.run(one(*r)) for r in requests]
    return dict(outputs)


@pytest.mark.parametrize("name", ["qwen2_5_vl", "llava_next"])
def test_concurrent_requests_share_a_batch_and_sample_what_they_would_alone(tiny_models_dir, name):
    """Eight concurrent requests against the same eight one at a time, on the random tiny model (every token ~1e-5
    likely: the hardest case for a draw to survive the rounding differences a padded batch brings)."""
    alone_client = load_local_client(str(tiny_models_dir / name), seed=5)
    requests = _requests(alone_client)
    alone = _serve(alone_client, requests, concurrently=False)
    assert {call.batch_size for call in alone_client.calls} == {1}

    batched_client = load_local_client(str(tiny_models_dir / name), seed=5)
    batched = _serve(batched_client, requests, concurrently=True)
    sizes = [call.batch_size for call in batched_client.calls]
    assert max(sizes) >= 4 and len(sizes) == len(requests), sizes  # text and image requests batch apart
    group = [f"group-{i}" for i in range(4)]
    # equal requests are interchangeable (module docstring); every other request gets exactly its own sample
    assert sorted(batched[g].token_ids for g in group) == sorted(alone[g].token_ids for g in group)
    assert len({tuple(alone[g].token_ids) for g in group}) > 1
    for key in ("hi", "long", "greedy", "short"):
        assert batched[key].token_ids == alone[key].token_ids, key
        assert batched[key].log_probs == pytest.approx(alone[key].log_probs, abs=1e-4), key
    assert len(batched["short"].token_ids) <= 2 and len(batched["long"].token_ids) <= 8


def test_batches_are_capped_and_a_failed_batch_fails_each_of_its_requests(tiny_qwen_dir):
    client = load_local_client(str(tiny_qwen_dir), seed=5, max_batch_size=2)
    requests = [r for r in _requests(client) if r[3] is None]
    _serve(client, requests, concurrently=True)
    assert max(call.batch_size for call in client.calls) == 2

    def fail(module, args, output):
        raise RuntimeError("device lost")

    client.model.lm_head.register_forward_hook(fail)

    async def together():
        return await asyncio.gather(
            *(client.generate(n, prompt_ids=p, sampling_params=s) for n, p, s, _ in requests), return_exceptions=True
        )

    errors = asyncio.run(asyncio.wait_for(together(), timeout=60))
    assert len(errors) == len(requests) and all(isinstance(e, RuntimeError) and "device lost" in str(e) for e in errors)
