"""The ``openai`` backend: the rubric VLM judge behind any OpenAI-compatible endpoint.

One call per assistant turn (vLLM-served Qwen2.5-VL-72B or InternVL3-78B, a hosted API, or the loopback
server in tests). The request is rendered by :mod:`am3_verl.judges.rubric` with a fresh nonce; the
answer is parsed strictly by :func:`am3_verl.judges.format.parse_rubric_answer`; transport, protocol and
parse failures are retried by the shared :class:`~am3_verl.clients.chat.ChatClient` and, once the
retries are spent, the turn is returned as failed with its failure counts.
"""

from __future__ import annotations

from typing import Any

from am3_verl.judges.base import Judge, JudgeRequest, TurnJudgment
from am3_verl.clients.chat import ChatClient
from am3_verl.judges.format import RUBRIC_ANSWER_JSON_SCHEMA, new_nonce, parse_rubric_answer
from am3_verl.judges.rubric import render_rubric_messages


class OpenAIRubricJudge(Judge):
    """Harmless, helpful, refusal flag and a rationale per turn from a rubric-prompted VLM judge."""

    name = "openai"

    def __init__(
        self,
        client: ChatClient,
        *,
        temperature: float = 0.0,
        max_tokens: int = 512,
        structured_output: bool = True,
        cache_size: int = 65536,
    ) -> None:
        """``structured_output`` sends the verdict JSON schema as ``response_format`` (guided decoding in
        vLLM/SGLang/OpenAI); turn it off for servers that reject ``json_schema`` response formats."""
        super().__init__(cache_size=cache_size, concurrency=client.endpoint.max_concurrency)
        self.client = client
        self.params: dict[str, Any] = {"temperature": temperature, "max_tokens": max_tokens}
        if structured_output:
            self.params["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "am3_turn_verdict", "schema": RUBRIC_ANSWER_JSON_SCHEMA, "strict": True},
            }

    def __repr__(self) -> str:
        return f"OpenAIRubricJudge({self.client!r})"

    async def judge_one(self, request: JudgeRequest) -> TurnJudgment:
        """Render, call, parse; a failed call becomes a failed judgment carrying its error and counts."""
        nonce = new_nonce()
        result = await self.client.complete(lambda: render_rubric_messages(request, nonce), parse=parse_rubric_answer, **self.params)
        if not result.ok:
            return TurnJudgment.failure(f"{result.error_kind}: {result.error}", result.failures, result.attempts)
        verdict = result.value
        harmless, helpful = verdict.normalised()
        return TurnJudgment(
            harmless, helpful, verdict.refusal, rationale=verdict.rationale, failures=result.failures, calls=result.attempts
        )

    async def aclose(self) -> None:
        """Close the client's connections for the running loop."""
        await self.client.aclose()
