"""The dialogue loop inside a real Ray actor running verl's ``AgentLoopWorker`` (as ``main_ppo`` deploys it).

Generation is the canned backend, shipped to the actor by Ray; vLLM servers need CUDA and cannot run here.
"""

import pytest
import ray

import canned_generation
from canned_generation import CannedGenerationClient
from am3_verl.local.rollout import compose_ppo_config, load_rl_dataset, rollout_batch
from env_rows import FOUR_TURNS_IMAGES_IN_1_AND_3, dialogue_row

IM_END, HELLO = 151645, 9707


@pytest.mark.slow
def test_dialogue_loop_runs_in_a_ray_agent_loop_worker(tiny_qwen_dir, write_rl_parquet, agent_loop_yaml):
    from verl.experimental.agent_loop.agent_loop import AgentLoopWorker

    config = compose_ppo_config(tiny_qwen_dir, prompt_length=256, response_length=512, agent_loop_config_path=agent_loop_yaml())
    batch = rollout_batch(load_rl_dataset([write_rl_parquet([dialogue_row(0, FOUR_TURNS_IMAGES_IN_1_AND_3)])], config), [0], n=2)
    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True)
    ray.cloudpickle.register_pickle_by_value(canned_generation)  # tests/ is not on the Ray workers' path
    try:
        worker = ray.remote(AgentLoopWorker).remote(config, CannedGenerationClient([[HELLO, IM_END]]))
        output = ray.get(worker.generate_sequences.remote(batch), timeout=300)
    finally:
        ray.shutdown()
    assert len(output) == 2
    for info, records, mm in zip(
        output.non_tensor_batch["am3_dialogue"], output.non_tensor_batch["am3_turns"], output.non_tensor_batch["multi_modal_inputs"]
    ):
        assert info["stop_reason"] == "script_end" and info["assistant_turns"] == 4
        assert [r["reply"] for r in records] == ["Hello"] * 4
        assert mm["image_grid_thw"].shape[0] == 2
