"""The ``hf`` rollout server in-process: verl's generate contract, full-weight updates and their errors.

The same server runs as a Ray actor under ``main_ppo`` in tests/ppo; here its parts are checked directly.
"""

import asyncio

import pytest
import torch

from am3_verl.hf_rollout.server import HFRolloutServer, WeightLoadError, load_full_weights

HELLO_WORLD = [151644, 872, 198, 9707, 1879, 151645, 198, 151644, 77091, 198]


pytestmark = pytest.mark.slow  # runs the hf rollout server with the tiny models


@pytest.fixture(scope="module")
def server(tiny_qwen_dir):
    return HFRolloutServer(str(tiny_qwen_dir), response_length=16, seed=0, device="cpu")


def generate(server, max_tokens=6):
    params = {"temperature": 0.0, "max_tokens": max_tokens}
    return asyncio.run(server.generate("r", prompt_ids=HELLO_WORLD, sampling_params=params, image_data=None))


def test_generate_answers_verls_contract(server):
    output = generate(server)
    assert 0 < len(output.token_ids) <= 6 and len(output.log_probs) == len(output.token_ids)
    assert output.extra_fields["min_global_steps"] == output.extra_fields["max_global_steps"] == server.client.global_steps


def test_update_weights_changes_what_is_generated_and_the_weight_version(server):
    before = generate(server)
    weights = {name: torch.randn_like(p) for name, p in server.client.model.named_parameters()}
    assert server.update_weights(weights, global_steps=7) == len(weights)
    after = generate(server)
    assert after.log_probs != before.log_probs
    assert after.extra_fields["global_steps"] == 7 and server.get_stats()["weight_version"] == 1
    name, tensor = next(iter(weights.items()))
    assert torch.equal(dict(server.client.model.named_parameters())[name], tensor)


def test_a_partial_or_misnamed_or_misshapen_update_is_refused(server):
    params = {name: p.detach().clone() for name, p in server.client.model.named_parameters()}
    first = next(iter(params))
    with pytest.raises(WeightLoadError, match="lacks"):
        load_full_weights(server.client.model, {**params, "no.such.weight": torch.zeros(1)})
    with pytest.raises(WeightLoadError, match="not sent"):
        load_full_weights(server.client.model, {k: v for k, v in params.items() if k != first})
    last = list(params)[-1]
    with pytest.raises(WeightLoadError, match="shape"):
        load_full_weights(server.client.model, {**{k: v + 1 for k, v in params.items()}, last: torch.zeros(3)})
    for name, p in server.client.model.named_parameters():  # nothing was copied
        assert torch.equal(p, params[name])


def test_the_server_uses_the_processor_verl_gives_its_agent_loops(tiny_llava_dir):
    """LLaVA-NeXT: am3-verl's fixed-crop processor, as verl's hf_processor returns it, not the stock one."""
    from verl.utils import hf_processor

    server = HFRolloutServer(str(tiny_llava_dir), response_length=8, seed=0, device="cpu")
    assert type(server.client.processor.image_processor) is type(hf_processor(str(tiny_llava_dir)).image_processor)
