"""The CPU language-model engine: verl 0.9.1's FSDP engine with the output head run only where the loss reads.

verl 0.9.1's ``FSDPEngineWithLMHead`` (workers/engine/fsdp/transformer_impl.py) applies the output head to
every position of a micro-batch (prompt, masked user turns and padding included) and takes a full-vocabulary
log-softmax there. With Qwen's 151,936-token vocabulary that head is nearly all of a small model's training
compute; a multi-turn dialogue's loss reads a fraction of the positions (the assistant's tokens).

:class:`LossPositionsLMHeadEngine` keeps verl's engine and, for a **training** micro-batch whose loss is
verl's own ``ppo_loss`` or ``sft_loss``, hands the head only the hidden states of the positions that loss
reads (a forward pre-hook on the output embedding, inside the model's own forward, so FSDP's hooks run as
usual). Those positions' log-probs are computed as verl computes them (``logprobs_from_logits`` at the
sampling temperature); every other position's log-prob is 0, which both losses multiply by a mask of 0.
The loss, its gradient and every masked metric are unchanged up to float rounding.

Everything else takes verl's path unchanged: forward-only passes (old and reference log-probs, whose values
other code may read at any position), entropy or sum-of-squares outputs, fused kernels, remove-padding,
distillation, callers that ask for the model output back, and any other loss function.
"""

from __future__ import annotations

import functools
from contextlib import contextmanager

import torch
from verl.utils import tensordict_utils as tu
from verl.utils.dataset.dataset_utils import DatasetPadMode
from verl.utils.torch_functional import logprobs_from_logits
from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead
from verl.workers.utils.losses import ppo_loss, sft_loss
from verl.workers.utils.padding import build_attention_mask_from_nested

from am3_verl.compat.cpu import FULL_LM_HEAD_ENV

OTHER_OUTPUTS = ("calculate_entropy", "calculate_sum_pi_squared", "distillation_use_topk", "distillation_only",
                 "use_fused_kernels", "return_model_output")  # fmt: skip
"""Micro-batch flags under which verl's full-head path runs (they need logits or outputs at every position)."""
ANNOUNCEMENT = "am3-verl CPU engine: the output head runs at the loss's positions only"
"""The start of the line the engine prints at its first training micro-batch."""


def loss_positions(micro_batch, loss_function) -> torch.Tensor | None:
    """A boolean mask over the micro-batch's packed tokens (``input_ids.values()``): True where ``loss_function``
    reads the log-prob with a nonzero mask. ``None`` when the loss is not one this module knows or the micro-batch
    is not verl's packed (no-padding) layout; then the full head must run."""
    function = loss_function
    while isinstance(function, functools.partial):
        function = function.func
    if tu.get_non_tensor_data(data=micro_batch, key="pad_mode", default=DatasetPadMode.NO_PADDING) != DatasetPadMode.NO_PADDING:
        return None
    if tu.get_non_tensor_data(data=micro_batch, key="use_remove_padding", default=True):
        return None
    if any(tu.get_non_tensor_data(data=micro_batch, key=flag, default=False) for flag in OTHER_OUTPUTS):
        return None
    input_ids = micro_batch["input_ids"]
    if function is sft_loss:
        # sft_loss shifts the packed loss mask left by one token to align it with the log-probs.
        return torch.roll(micro_batch["loss_mask"].values().to(torch.bool), shifts=-1, dims=0)
    if function is ppo_loss:
        # no_padding_2_padding reads response token j of sequence i at packed index
        # offset_i + prompt_len_i - 1 + j (the position that predicts it).
        offsets = input_ids.offsets()
        prompt_lens = micro_batch["prompts"].offsets().diff()
        response_mask = micro_batch["response_mask"]
        needed = torch.zeros(input_ids.values().shape[0], dtype=torch.bool, device=input_ids.values().device)
        for i, row in enumerate(response_mask.unbind()):
            start = int(offsets[i] + prompt_lens[i] - 1)
            needed[start : start + row.shape[0]] = row.to(torch.bool)
        return needed
    return None


class LossPositionsLMHeadEngine(FSDPEngineWithLMHead):
    """verl's FSDP language-model engine whose training passes run the output head only at the loss's positions."""

    _head_positions: torch.Tensor | None = None
    """While a training micro-batch runs: the packed-token mask of :func:`loss_positions`."""
    _announced = False

    def forward_step(self, micro_batch, loss_function, forward_only):
        """verl's ``forward_step``; for training micro-batches of ``ppo_loss``/``sft_loss``, with the head at the
        loss's positions only (module docstring)."""
        needed = None if forward_only else loss_positions(micro_batch, loss_function)
        if needed is None:
            return super().forward_step(micro_batch, loss_function, forward_only)
        if not self._announced:  # once per engine: which engine trains, and what it skips
            self._announced = True
            print(f"{ANNOUNCEMENT}: {int(needed.sum())} of {needed.shape[0]} positions in the first training micro-batch "
                  f"({FULL_LM_HEAD_ENV}=1 runs verl's engine instead)", flush=True)  # fmt: skip
        with self._head_at(micro_batch, needed):
            return super().forward_step(micro_batch, loss_function, forward_only)

    @contextmanager
    def _head_at(self, micro_batch, needed: torch.Tensor):
        # The padded (batch, position) layout of the model's inputs, as verl builds them, is that of its hidden states.
        padded = build_attention_mask_from_nested(micro_batch["input_ids"]).bool()
        rows = torch.zeros(padded.shape, dtype=torch.bool, device=needed.device)
        rows[padded] = needed

        def keep_needed(module, args):
            hidden = args[0]
            if hidden.shape[:2] != rows.shape:
                raise RuntimeError(f"the output head got hidden states of shape {tuple(hidden.shape)}; the micro-batch's "
                                   f"padded layout is {tuple(rows.shape)} (verl's no-padding, no-remove-padding inputs)")  # fmt: skip
            return (hidden[rows],)

        handle = self.module.get_output_embeddings().register_forward_pre_hook(keep_needed)
        self._head_positions = needed
        try:
            yield
        finally:
            handle.remove()
            self._head_positions = None

    def prepare_model_outputs(self, output, output_args, micro_batch, logits_processor_func):
        """verl's outputs; inside :meth:`_head_at`, the log-probs built from the head's rows at the loss's positions."""
        needed = self._head_positions
        if needed is None:
            return super().prepare_model_outputs(output, output_args, micro_batch, logits_processor_func)
        logits = output.logits  # (needed positions, vocab), in packed order
        cu_seqlens = micro_batch["input_ids"].offsets()
        if not output_args.get("temperature_is_one", False):  # verl's per-sequence temperature, per token here
            per_token = output_args["temperature"].repeat_interleave(cu_seqlens.diff())[needed]
            logits = logits / per_token.clamp(min=1e-8).to(logits.dtype).unsqueeze(-1)
        labels = output_args["input_ids_rmpad_rolled"][needed]
        log_probs = torch.zeros(needed.shape[0], dtype=logits.dtype, device=logits.device)
        log_probs = log_probs.index_put((needed.nonzero(as_tuple=True)[0],), logprobs_from_logits(logits, labels))
        return {"log_probs": torch.nested.nested_tensor_from_jagged(log_probs, cu_seqlens)}
