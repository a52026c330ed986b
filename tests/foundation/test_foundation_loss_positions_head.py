"""The CPU engine's output head runs exactly where verl's losses read (am3_verl.compat.loss_positions_head).

The positions are checked against verl's own code: ``sft_loss``'s gradient and ``no_padding_2_padding`` (what
``ppo_loss`` reads). The engine itself is compared with verl's full head through verl's SFT trainer in
test_foundation_cpu_sft.py, and runs every ``main_ppo`` test's update.
"""

import functools
from types import SimpleNamespace

import pytest
import torch
from verl.utils import tensordict_utils as tu
from verl.utils.dataset.dataset_utils import DatasetPadMode
from verl.workers.utils.losses import ppo_loss, sft_loss, value_loss
from verl.workers.utils.padding import no_padding_2_padding

from am3_verl.compat.loss_positions_head import LossPositionsLMHeadEngine, loss_positions

PROMPT_LENS, RESPONSE_MASKS = (3, 5, 2), ([1, 1, 0, 0, 1, 1], [1, 0], [0, 1, 1, 1, 0])


def nested(rows, dtype=None):
    return torch.nested.as_nested_tensor([torch.as_tensor(row, dtype=dtype) for row in rows], layout=torch.jagged)


def rl_micro_batch(**flags):
    """Three dialogues in verl's packed layout: prompt then response tokens, a response mask with masked user turns."""
    generator = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, 100, (n,), generator=generator) for n in PROMPT_LENS]
    responses = [torch.randint(0, 100, (len(mask),), generator=generator) for mask in RESPONSE_MASKS]
    data = tu.get_tensordict({
        "input_ids": nested([torch.cat([p, r]) for p, r in zip(prompts, responses)]),
        "prompts": nested(prompts), "responses": nested(responses),
        "response_mask": nested(RESPONSE_MASKS, torch.int64),
        "loss_mask": nested([[0] * p + m for p, m in zip(PROMPT_LENS, RESPONSE_MASKS)], torch.int64),
    })  # fmt: skip
    tu.assign_non_tensor(data, pad_mode=DatasetPadMode.NO_PADDING, use_remove_padding=False, **flags)
    return data


def test_ppo_positions_are_the_ones_verls_ppo_loss_reads_under_the_response_mask():
    data = rl_micro_batch()
    total = data["input_ids"].values().shape[0]
    packed_index = torch.nested.nested_tensor_from_jagged(torch.arange(total, dtype=torch.float32), data["input_ids"].offsets())
    read = no_padding_2_padding(packed_index, data)  # (batch, max response): the packed index each response token is read at
    mask = data.select("response_mask").to_padded_tensor()["response_mask"].bool()
    needed = loss_positions(data, functools.partial(ppo_loss, config=None))
    assert needed.nonzero().flatten().tolist() == sorted(read[mask].long().tolist())
    assert int(needed.sum()) == sum(map(sum, RESPONSE_MASKS))


def test_sft_positions_are_the_ones_with_a_gradient_in_verls_sft_loss():
    data = rl_micro_batch()
    total = data["input_ids"].values().shape[0]
    log_probs = torch.randn(total, requires_grad=True)
    tu.assign_non_tensor(data, dp_size=1, batch_num_tokens=int(data["loss_mask"].values().sum()))
    model_output = {"log_probs": torch.nested.nested_tensor_from_jagged(log_probs, data["input_ids"].offsets())}
    loss, _ = sft_loss(None, model_output, data)
    loss.backward()
    assert torch.equal(loss_positions(data, functools.partial(sft_loss, config=None)), log_probs.grad != 0)


@pytest.mark.parametrize("flag", ["calculate_entropy", "use_fused_kernels", "return_model_output", "distillation_only"])
def test_outputs_that_need_every_position_take_verls_full_head(flag):
    assert loss_positions(rl_micro_batch(**{flag: True}), functools.partial(ppo_loss, config=None)) is None


def test_other_losses_and_remove_padding_take_verls_full_head():
    assert loss_positions(rl_micro_batch(), functools.partial(value_loss, config=None)) is None
    data = rl_micro_batch()
    tu.assign_non_tensor(data, use_remove_padding=True)
    assert loss_positions(data, functools.partial(ppo_loss, config=None)) is None


def test_log_probs_at_the_positions_match_the_full_vocabulary_at_each_rows_temperature():
    data = rl_micro_batch()
    packed = data["input_ids"].values()
    labels = torch.roll(packed, shifts=-1)
    needed = loss_positions(data, functools.partial(ppo_loss, config=None))
    full_logits = torch.randn(packed.shape[0], 100, generator=torch.Generator().manual_seed(1))
    temperature = torch.tensor([0.7, 1.0, 1.3])
    per_token = temperature.repeat_interleave(data["input_ids"].offsets().diff())
    expected = torch.log_softmax(full_logits / per_token[:, None], -1).gather(-1, labels[:, None]).squeeze(-1)

    engine = SimpleNamespace(_head_positions=needed)
    output_args = {"temperature": temperature, "temperature_is_one": False, "input_ids_rmpad_rolled": labels}
    out = LossPositionsLMHeadEngine.prepare_model_outputs(engine, SimpleNamespace(logits=full_logits[needed]), output_args, data, None)
    log_probs = out["log_probs"].values()
    torch.testing.assert_close(log_probs[needed], expected[needed])
    assert torch.all(log_probs[~needed] == 0)
