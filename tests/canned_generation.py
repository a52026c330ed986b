"""A generation backend for tests and overhead benchmarks: scripted token ids, answered instantly.

It stands in for verl's vLLM/SGLang server manager (which needs CUDA) where a test needs exact,
instant replies; :class:`am3_verl.local.generation.LocalGenerationClient` is the real CPU backend.
"""

from __future__ import annotations

from typing import Any, Optional

from verl.workers.rollout.replica import TokenOutput


class CannedGenerationClient:
    """A generation backend that answers instantly from a script, for tests and overhead benchmarks.

    ``replies`` is a list of token-id lists served in call order (cycling), or a callable
    ``(call_index, prompt_ids, max_tokens) -> token_ids``. Each reply is cut to ``max_tokens``; log-probs
    are a constant ``log_prob``. It honours the same ``generate`` contract as verl's server manager.
    """

    def __init__(self, replies: Any, log_prob: float = -0.5, global_steps: int = 0):
        self.replies = replies
        self.log_prob = log_prob
        self.global_steps = global_steps
        self.calls: list[dict[str, Any]] = []

    async def generate(
        self,
        request_id: str,
        *,
        prompt_ids: list[int],
        sampling_params: dict[str, Any],
        image_data: Optional[list[Any]] = None,
        **kwargs: Any,
    ) -> TokenOutput:
        """Serve the next scripted reply (cut to ``sampling_params["max_tokens"]``)."""
        index = len(self.calls)
        max_tokens = int(sampling_params.get("max_tokens") or 1 << 30)
        if callable(self.replies):
            token_ids = list(self.replies(index, prompt_ids, max_tokens))
        else:
            token_ids = list(self.replies[index % len(self.replies)])
        token_ids = token_ids[:max_tokens]
        self.calls.append({"prompt_length": len(prompt_ids), "num_images": len(image_data or []), "max_tokens": max_tokens})
        steps = self.global_steps
        return TokenOutput(
            token_ids=token_ids,
            log_probs=[self.log_prob] * len(token_ids),
            stop_reason="completed",
            extra_fields={"global_steps": steps, "min_global_steps": steps, "max_global_steps": steps},
        )
