"""The ``hf`` rollout server: one Ray actor that generates with a Hugging Face model for verl's agent loops.

It answers the calls verl's ``LLMServerClient`` and ``RolloutReplica`` make on a vLLM/SGLang server
actor: ``generate(...) -> TokenOutput`` (through :class:`~am3_verl.local.generation.LocalGenerationClient`,
so prompts with images, processed log-probs and the end-of-turn rule are the ones the tests pin), and the
life-cycle calls (``wake_up``, ``sleep``, kv-cache, abort, profile), which have nothing to do for a
model without a paged KV cache. ``update_weights`` loads the actor's full weights, sent by the
:class:`~am3_verl.hf_rollout.adapter.HFServerAdapter` of the leader training rank every step.

The model lives on verl's current device (``VERL_PLATFORM=cpu`` gives the CPU). Concurrent requests are
served in batches of up to ``rollout.max_num_seqs`` (verl's cap on sequences per batch), one left-padded
``generate`` per batch of requests whose images have one tensor layout. With a seed, what is sampled
depends neither on the order in which the agent loops' requests arrive nor on which of them share a
batch (:class:`LocalGenerationClient`).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Optional

import torch

from am3_verl.local.generation import LocalGenerationClient

logger = logging.getLogger(__name__)


def server_actor_name(replica_rank: int, prefix: str = "") -> str:
    """The Ray actor name of replica ``replica_rank``'s server (adapters look it up by this name)."""
    return f"{prefix}am3_hf_server_{replica_rank}"


class WeightLoadError(RuntimeError):
    """The weights sent by the trainer do not match the rollout model's parameters."""


def load_full_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> int:
    """Copy ``weights`` (full tensors by parameter name) into ``model`` in place; returns the count copied.

    Every name must be one of the model's parameters or buffers, and every parameter must be sent
    (tied parameters count once): a partial or mis-named update raises :class:`WeightLoadError`
    instead of leaving the rollout model silently stale.
    """
    own = dict(model.named_parameters(remove_duplicate=False))
    own.update(dict(model.named_buffers()))
    unknown = sorted(set(weights) - set(own))
    if unknown:
        raise WeightLoadError(f"{len(unknown)} weight(s) sent for names the rollout model lacks, e.g. {unknown[:3]}")
    sent_storages = {own[name].data_ptr() for name in weights}
    missing = sorted(name for name, p in model.named_parameters() if p.data_ptr() not in sent_storages)
    if missing:
        raise WeightLoadError(f"{len(missing)} parameter(s) of the rollout model were not sent, e.g. {missing[:3]}")
    for name, tensor in weights.items():  # all checks before the first copy: a refused update changes nothing
        if own[name].shape != tensor.shape:
            raise WeightLoadError(f"weight {name!r}: sent shape {tuple(tensor.shape)}, model has {tuple(own[name].shape)}")
    with torch.no_grad():
        for name, tensor in weights.items():
            own[name].copy_(tensor.to(device=own[name].device, dtype=own[name].dtype))
    return len(weights)


class HFRolloutServer:
    """A Hugging Face generation server with verl's rollout-server interface (run as a Ray actor).

    ``model_path`` is the policy checkpoint (any ``AutoModelForImageTextToText`` VLM with its processor);
    ``response_length`` is verl's default ``max_tokens`` for a call that passes none; ``seed`` makes the
    sampled tokens reproducible; ``max_batch_size`` caps the requests answered by one ``generate``.
    """

    def __init__(
        self,
        model_path: str,
        response_length: int,
        seed: Optional[int] = None,
        device: Optional[str] = None,
        max_batch_size: int = 64,
    ):
        from transformers import AutoModelForImageTextToText
        from verl.utils import hf_processor
        from verl.utils.device import get_device_name

        self.device = device or get_device_name()
        model = AutoModelForImageTextToText.from_pretrained(model_path, dtype=torch.float32).eval().to(self.device)
        # The processor verl's agent loops use (am3-verl's LLaVA-NeXT binding included), so the server
        # counts image features exactly as the token builder expanded them.
        self.client = LocalGenerationClient(
            model, hf_processor(model_path), default_max_tokens=response_length, seed=seed, max_batch_size=max_batch_size
        )
        self.weight_version = 0
        self.stats: dict[str, float] = {"weight_updates": 0, "weight_update_s": 0.0, "generate_calls": 0, "generate_s": 0.0}

    async def generate(self, request_id: str, *, prompt_ids: list[int], sampling_params: dict[str, Any], **kwargs: Any):
        """verl's server ``generate`` contract (see :class:`LocalGenerationClient`)."""
        start = time.perf_counter()
        output = await self.client.generate(request_id, prompt_ids=prompt_ids, sampling_params=sampling_params, **kwargs)
        self.stats["generate_calls"] += 1
        self.stats["generate_s"] += time.perf_counter() - start
        return output

    def update_weights(self, weights: dict[str, torch.Tensor], global_steps: Optional[int] = None) -> int:
        """Load the actor's full weights; later generations report ``global_steps`` as their weight version."""
        start = time.perf_counter()
        count = load_full_weights(self.client.model, weights)
        if global_steps is not None:
            self.client.global_steps = int(global_steps)
        self.weight_version += 1
        self.stats["weight_updates"] += 1
        self.stats["weight_update_s"] += time.perf_counter() - start
        return count

    def get_stats(self) -> dict[str, float]:
        """Counters for benchmarks and tests: weight updates and generate calls with their seconds."""
        return {**self.stats, "weight_version": self.weight_version, "global_steps": self.client.global_steps}

    def parameter_checksum(self) -> float:
        """Sum of every parameter (float64), to check in tests which weights the server holds."""
        with torch.no_grad():
            return float(sum(p.double().sum() for p in self.client.model.parameters()))

    # The life-cycle calls verl makes on every rollout server. A Hugging Face model has no paged KV
    # cache to free and no scheduler to pause, so each is a no-op here.
    async def wake_up(self) -> None:
        """No-op (weights stay resident)."""

    async def sleep(self) -> None:
        """No-op (weights stay resident)."""

    async def clear_kv_cache(self) -> None:
        """No-op (no persistent KV cache)."""

    async def release_kv_cache(self) -> None:
        """No-op (no persistent KV cache)."""

    async def resume_kv_cache(self) -> None:
        """No-op (no persistent KV cache)."""

    async def abort_all_requests(self, reject_request: bool = False) -> dict[str, Any]:
        """Nothing to abort between steps: every request runs to completion."""
        return {"aborted_count": 0, "request_ids": []}

    async def resume_generation(self) -> None:
        """No-op (nothing is paused)."""

    async def wait_for_requests_to_drain(self) -> None:
        """No-op (requests are served to completion)."""

    async def start_profile(self, **kwargs: Any) -> None:
        """No-op (use py-spy or torch.profiler around the actor instead)."""

    async def stop_profile(self) -> None:
        """No-op."""
