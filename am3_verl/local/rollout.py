"""Run verl's own ``AgentLoopWorker`` on the CPU with the local generation backend.

This is the rollout half of ``main_ppo`` without vLLM: the config is verl's ``ppo_trainer`` composed with
hydra, the dataset is verl's ``RLHFDataset``, the worker is verl's ``AgentLoopWorker`` (the class its
Ray actors run), and generation is :class:`~am3_verl.local.generation.LocalGenerationClient`. Tests, the
rollout-vs-training consistency check and ``make demo`` use it.
"""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from am3_verl.packaged import recipe

AGENT_LOOP_CONFIG = recipe("agent_loops", "am3_dialogue.yaml")


def verl_config_dir() -> str:
    """Folder of verl's hydra configs (``ppo_trainer.yaml``, ``sft_trainer_engine.yaml``, ...)."""
    import verl

    return str(Path(verl.__file__).parent / "trainer" / "config")


def compose_ppo_config(
    model_path: str | os.PathLike,
    *,
    prompt_length: int = 1024,
    response_length: int = 1024,
    agent_loop_config_path: str | os.PathLike = AGENT_LOOP_CONFIG,
    overrides: Sequence[str] = (),
):
    """verl's ``ppo_trainer`` config with the rollout pointed at ``model_path`` and our agent loops."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    base = [
        f"actor_rollout_ref.model.path={model_path}",
        f"actor_rollout_ref.rollout.prompt_length={prompt_length}",
        f"actor_rollout_ref.rollout.response_length={response_length}",
        f"actor_rollout_ref.rollout.agent.agent_loop_config_path={agent_loop_config_path}",
        "actor_rollout_ref.rollout.agent.default_agent_loop=am3_dialogue",
        "actor_rollout_ref.rollout.calculate_log_probs=True",
        "actor_rollout_ref.rollout.name=vllm",  # mandatory in verl's config; generation here is local
        "data.image_key=images",
        f"data.max_prompt_length={prompt_length}",
        f"data.max_response_length={response_length}",
        "data.return_raw_chat=True",
    ]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=verl_config_dir(), version_base=None):
        return compose(config_name="ppo_trainer", overrides=[*base, *overrides])


def make_agent_loop_worker(config, client):
    """verl's ``AgentLoopWorker`` (the plain class its Ray actor wraps) driving ``client``."""
    from verl.experimental.agent_loop.agent_loop import AgentLoopWorker

    return AgentLoopWorker(config, llm_client=client)


def load_rl_dataset(parquet_files: Sequence[str | os.PathLike], config):
    """verl's ``RLHFDataset`` over our RL parquet, with the tokenizer and processor of the rollout model."""
    from verl.utils import hf_processor, hf_tokenizer
    from verl.utils.dataset.rl_dataset import RLHFDataset

    model_path = config.actor_rollout_ref.model.path
    return RLHFDataset(
        data_files=[str(f) for f in parquet_files],
        tokenizer=hf_tokenizer(model_path),
        processor=hf_processor(model_path),
        config=config.data,
    )


def rollout_batch(dataset, indices: Sequence[int], n: int = 1, *, validate: bool = False, global_steps: int = 0):
    """The ``DataProto`` the trainer hands to rollout: rows collated, a ``uid`` per prompt, repeated ``n`` times."""
    from verl import DataProto
    from verl.utils.dataset.rl_dataset import collate_fn

    rows = collate_fn([dataset[i] for i in indices])
    rows["uid"] = np.array([str(uuid.uuid4()) for _ in indices], dtype=object)
    batch = DataProto.from_single_dict(rows, meta_info={"validate": validate, "global_steps": global_steps})
    return batch.repeat(repeat_times=n, interleave=True)


async def generate(worker, batch) -> Any:
    """Run ``worker.generate_sequences`` (agent loops + verl's post-processing) on ``batch``."""
    return await worker.generate_sequences(batch)


def default_model_dir(name: str = "qwen2_5_vl", root: Optional[str] = None) -> Path:
    """Where the tiny model ``name`` is: under ``root``, else ``AM3_TINY_MODELS``, else ``<environment>/am3-tiny-models``.

    ``make setup`` builds them into its environment's ``.venv/am3-tiny-models`` (``sys.prefix`` there).
    """
    base = root or os.environ.get("AM3_TINY_MODELS") or str(Path(sys.prefix) / "am3-tiny-models")
    return Path(base).resolve() / name
