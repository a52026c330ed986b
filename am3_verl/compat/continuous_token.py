"""Continuous-token builder for LLaVA-NeXT agent loops: verl's generic VL builder + the template's turn boundary.

verl 0.9.1 picks a continuous-token builder by the root ``model_type``; ``llava_next`` is not in its
table, so it falls back to ``VLContinuousTokenBuilder``, which renders images correctly (processor
chat template, one ``<image>`` expanded to the any-resolution feature count) but has no turn-boundary
handling. LLaVA-NeXT checkpoints ship different chat templates (Mistral ``[INST]``, Vicuna
``USER:/ASSISTANT:``, ChatML on Qwen backbones), and generation stops on the end-of-turn token while the
template may render more after it (ChatML: ``<|im_end|>`` then ``\\n``). Appending the next user turn
straight after the generated end-of-turn token then drops those tokens, and the training sequence
differs from what the chat template gives for the same dialogue.

:class:`LlavaNextContinuousTokenBuilder` reads the boundary from the checkpoint's own chat template (what
the template renders after the end-of-turn token that closes an assistant message) and inserts it, with
mask 0, when a context message follows a prefix that ends with that token — the generalisation of
verl's Qwen ChatML newline fix, independent of which template the checkpoint ships.

Reaches (verl 0.9.1): the subclass overrides the private ``ContinuousTokenBuilder._merge_context_token_ids``
and calls the private ``_render_tokens`` (verl/utils/tokenizer/continuous_token.py:206, :226); verl picks
builders from the private ``_CONTINUOUS_TOKEN_BUILDER_REGISTRY`` (continuous_token_wiring.py), which has no
register function, so the agent loop asks :func:`continuous_token_builder_for` to replace the builder
verl created. A public ``register_continuous_token_builder(model_type, cls)`` and a public boundary hook
would remove both.
"""

from __future__ import annotations

from typing import Any, Optional

from verl.utils.tokenizer.continuous_token import MergeResult, VLContinuousTokenBuilder

MODEL_TYPE = "llava_next"
_PROBE_USER = "Question."
_PROBE_REPLY = "Answer."


class LlavaNextContinuousTokenBuilder(VLContinuousTokenBuilder):
    """``VLContinuousTokenBuilder`` that restores the chat template's tokens after a generated end-of-turn token."""

    def __init__(self, tokenizer: Any, processor: Any, **kwargs: Any):
        super().__init__(tokenizer, processor, **kwargs)
        self.end_of_turn_id: Optional[int] = tokenizer.eos_token_id
        self.boundary_ids: list[int] = self._template_boundary()

    def _template_boundary(self) -> list[int]:
        """Tokens the chat template renders after the end-of-turn token closing an assistant message."""
        if self.end_of_turn_id is None:
            return []
        messages = [
            {"role": "user", "content": [{"type": "text", "text": _PROBE_USER}]},
            {"role": "assistant", "content": [{"type": "text", "text": _PROBE_REPLY}]},
        ]
        ids = self._render_tokens(messages, add_generation_prompt=False)
        if self.end_of_turn_id not in ids:
            return []  # the template does not close replies with the end-of-turn token: nothing to restore
        last = len(ids) - 1 - ids[::-1].index(self.end_of_turn_id)
        return ids[last + 1 :]

    def _merge_context_token_ids(self, runtime_token_ids: list[int], appended_token_ids: list[int], **kwargs: Any) -> MergeResult:
        prefix = list(runtime_token_ids)
        inserted: list[int] = []
        if self.boundary_ids and prefix and prefix[-1] == self.end_of_turn_id:
            inserted = list(self.boundary_ids)
            prefix.extend(inserted)
        return MergeResult(
            token_ids=prefix + list(appended_token_ids),
            appended_token_count=len(appended_token_ids),
            kind="context",
            inserted_token_ids=inserted,
        )


def continuous_token_builder_for(builder: Any, *, hf_model_type: Optional[str]) -> Any:
    """The builder an agent loop should use: a LLaVA-NeXT builder for ``llava_next``, else ``builder`` unchanged.

    ``builder`` is the one verl's ``create_continuous_token_builder`` made; its tokenizer, processor and
    kwargs are reused, so only the boundary handling changes.
    """
    if (hf_model_type or "").strip().lower() != MODEL_TYPE or not isinstance(builder, VLContinuousTokenBuilder):
        return builder
    if isinstance(builder, LlavaNextContinuousTokenBuilder):
        return builder
    return LlavaNextContinuousTokenBuilder(
        builder.tokenizer,
        builder.processor,
        chat_template_kwargs=builder.chat_template_kwargs,
        mm_processor_kwargs=builder.mm_processor_kwargs,
    )
