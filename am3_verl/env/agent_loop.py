"""``am3_dialogue``: the verl agent loop that plays a whole multi-turn multimodal dialogue.

The policy answers every assistant turn; user turns come from the dataset script, a simulated user,
or both (:mod:`am3_verl.env.user_turns`). All tokenisation goes through verl's continuous-token
builder (``ct_build_initial_tokens`` / ``ct_merge_assistant_token`` / ``ct_merge_context_msg``), so
model-family details (chat template, image-token expansion, turn boundaries) stay in verl and the
processor; nothing here is specific to one model family.

Token accounting (``rollout.response_length`` is the budget of the whole response: every reply, every
later user turn with its image tokens, and one trailing slot):

* each reply may use at most the remaining budget minus the slot, and at most ``max_reply_tokens``;
* a reply that stops on a token limit (no end-of-turn token) is marked ``truncated``. If the limit was
  the whole remaining budget, the dialogue ends (``stop_reason = "budget"``); if it was
  ``max_reply_tokens``, the turn is closed with the tokenizer's end-of-turn token (mask 0, not trained)
  so the next user turn follows a well-formed boundary, and the dialogue goes on;
* a user turn is merged first and kept only if the merged response still leaves room for the slot and
  one reply token; otherwise it is dropped whole (an image span is never cut) and the dialogue ends
  with ``stop_reason = "budget"``;
* after the final reply one slot token (the tokenizer's pad token, mask 0) is appended: the per-turn
  score contract (:mod:`am3_verl.turn_scores`) stores the last turn's helpfulness score there.

Policy tokens have mask 1 and the backend's log-probs; user, boundary and slot tokens have mask 0.
``extra_fields`` carries ``am3_turns`` (one :class:`~am3_verl.dialogue.AssistantTurnRecord` dict per
reply, read by the judges), ``am3_dialogue`` (stop reason and flags), the server's
``min_global_steps``/``max_global_steps``, and empty ``turn_scores``/``tool_rewards`` for schema
stability with verl's own loops.
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any, Optional
from uuid import uuid4

from omegaconf import DictConfig, OmegaConf
from verl.experimental.agent_loop.agent_loop import AgentLoopBase, AgentLoopMetrics
from verl.utils.profiler import simple_timer

from am3_verl.clients.images import content_image_bytes
from am3_verl.dialogue import IMAGE_PLACEHOLDER, AssistantTurnRecord
from am3_verl.env import AGENT_NAME
from am3_verl.env.output import DialogueAgentLoopOutput
from am3_verl.compat.continuous_token import continuous_token_builder_for
from am3_verl.env.user_turns import (
    SimulatedUser,
    SimulatorConfig,
    SimulatorFailed,
    UserSourceName,
    UserTurn,
    scripted_turns,
)

logger = logging.getLogger(__name__)

LATER_TURNS_COLUMN = "am3_later_turns"


@dataclass
class DialogueDiagnostics:
    """``extra_fields["am3_dialogue"]``: how the dialogue ended."""

    stop_reason: str = "script_end"
    """``script_end`` | ``max_turns`` | ``budget`` | ``simulator_failed``."""
    truncated: bool = False
    """The dialogue ended early for lack of token budget (a reply or a user turn did not fit)."""
    simulator_failed: bool = False
    simulator_error: str = ""
    assistant_turns: int = 0
    user_turns: int = 0
    dropped_user_turn_tokens: int = 0
    """Size of the user turn that did not fit (0 if none)."""


@dataclass
class _Dialogue:
    messages: list[dict[str, Any]]
    images: list[Any]
    prompt_ids: list[int]
    runtime_ids: list[int]
    response_mask: list[int] = field(default_factory=list)
    response_logprobs: Optional[list[float]] = field(default_factory=list)
    """None once a backend answer came without log-probs (then the output carries none)."""
    records: list[AssistantTurnRecord] = field(default_factory=list)
    history: list[tuple[UserTurn, str]] = field(default_factory=list)
    server_extra_fields: dict[str, Any] = field(default_factory=dict)
    reply_open: bool = False
    """The last reply was cut by ``max_reply_tokens`` and has no end-of-turn token yet."""
    diagnostics: DialogueDiagnostics = field(default_factory=DialogueDiagnostics)


@lru_cache(maxsize=16)
def _has_vision_tower(model_path: str) -> bool:
    from transformers import AutoConfig

    return getattr(AutoConfig.from_pretrained(model_path), "vision_config", None) is not None


def _with_loaded_images(raw_prompt: Any) -> list[dict[str, Any]]:
    """The prompt's messages, with every PIL image decoded here, on the event-loop thread.

    verl repeats a prompt's row ``rollout.n`` times by reference, so all rollouts of a prompt share one
    lazily-opened PIL image; decoding it concurrently from executor threads races inside PIL. Decoding
    once, before any executor work, makes later reads safe.
    """
    messages = list(raw_prompt)
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            for block in content:
                image = block.get("image") if isinstance(block, dict) else None
                if hasattr(image, "load"):
                    image.load()
    return messages


def _first_user_turn(messages: list[dict[str, Any]]) -> UserTurn:
    """The dataset's first user message as a :class:`UserTurn` (text with placeholders, image bytes)."""
    user = next(m for m in messages if m.get("role") == "user")
    content = user["content"]
    if isinstance(content, str):
        return UserTurn(text=content)
    parts, images = [], []
    for block in content:
        if block.get("type") == "image":
            parts.append(IMAGE_PLACEHOLDER)
            images.append(content_image_bytes(block, "raw_prompt's first user message"))
        elif block.get("type") == "text":
            parts.append(block.get("text", ""))
    return UserTurn(text="".join(parts), images=images)


def plain_mapping(value: Any) -> dict[str, Any]:
    """A YAML section (omegaconf ``DictConfig``, dict or None) as plain nested dicts, for pydantic to validate."""
    if value is None:
        return {}
    if isinstance(value, DictConfig):
        return OmegaConf.to_container(value, resolve=True)  # type: ignore[return-value]
    return dict(value)


class DialogueAgentLoop(AgentLoopBase):
    """Plays whole dialogues for GRPO rollouts (see the module docstring for the contract).

    Constructor keys (set them in the agent-loop YAML next to ``_target_``):

    * ``user_source``: ``replay`` (default) | ``simulate`` | ``hybrid``;
    * ``max_turns``: cap on assistant turns (required for ``simulate``/``hybrid``; default: no cap);
    * ``max_reply_tokens``: cap on one reply's tokens (default: the remaining budget);
    * ``simulator``: :class:`~am3_verl.env.user_turns.SimulatorConfig` fields.
    """

    def __init__(
        self,
        *args: Any,
        user_source: UserSourceName = "replay",
        max_turns: Optional[int] = None,
        max_reply_tokens: Optional[int] = None,
        simulator: Optional[dict[str, Any]] = None,
        **kwargs: Any,
    ):
        kwargs.pop("tools", None)
        self.hf_model_type_name = kwargs.get("hf_model_type")
        super().__init__(*args, **kwargs)
        # verl has no per-model_type builder registry; LLaVA-NeXT needs its template's turn boundary.
        self.continuous_token_builder = continuous_token_builder_for(self.continuous_token_builder, hf_model_type=self.hf_model_type_name)
        if user_source not in ("replay", "simulate", "hybrid"):
            raise ValueError(f"{AGENT_NAME}: user_source must be replay, simulate or hybrid, got {user_source!r}")
        if user_source != "replay" and not max_turns:
            raise ValueError(f"{AGENT_NAME}: user_source={user_source!r} needs max_turns")
        self.user_source = user_source
        self.max_turns = max_turns
        self.max_reply_tokens = max_reply_tokens
        self.response_length = self.rollout_config.response_length
        self.simulator_config = SimulatorConfig.model_validate(plain_mapping(simulator))
        self.simulator = SimulatedUser(self.simulator_config) if user_source != "replay" else None
        self.end_of_turn_ids = self._end_of_turn_ids()
        pad = self.tokenizer.pad_token_id
        self.slot_token_id = pad if pad is not None else self.tokenizer.eos_token_id
        self._check_processor()

    def _check_processor(self) -> None:
        if self.processor is None:
            if _has_vision_tower(self.config.actor_rollout_ref.model.path):
                raise ValueError(
                    f"{AGENT_NAME}: {self.config.actor_rollout_ref.model.path} is a vision-language model "
                    f"(model_type={self.hf_model_type_name!r}) but verl built no processor for it "
                    "(verl 0.9.1's hf_processor knows Qwen-VL, GLM-4V, Gemma4 and Mllama processors), so its "
                    "images cannot be tokenised; see README, 'Supported base models'"
                )
            return
        if not self.continuous_token_builder.supports_multimodal():
            raise ValueError(
                f"{AGENT_NAME}: the model's processor {type(self.processor).__name__} has no multimodal "
                "continuous-token builder in verl; image dialogues cannot be played"
            )

    def _end_of_turn_ids(self) -> set[int]:
        ids = {self.tokenizer.eos_token_id, self.tokenizer.pad_token_id}
        return {i for i in ids if i is not None}

    async def run(self, sampling_params: dict[str, Any], **kwargs: Any) -> DialogueAgentLoopOutput:
        """Play one dialogue and return its tokens, masks, log-probs and per-turn records."""
        extra_info = kwargs.get("extra_info") or {}
        dialogue_id = str(extra_info.get("id", kwargs.get("index", "?")))
        script = scripted_turns(kwargs.get(LATER_TURNS_COLUMN), dialogue_id) if self.user_source != "simulate" else []
        goal = self.simulator_config.goal or str(extra_info.get("goal") or extra_info.get("category") or "")
        metrics: dict[str, Any] = {}
        request_id = uuid4().hex

        messages = _with_loaded_images(kwargs["raw_prompt"])
        multi_modal = await self.process_multi_modal_info(messages)
        images = list(multi_modal.get("images") or [])
        self._assert_mm_supported(bool(images))
        prompt_ids = await self.ct_build_initial_tokens(messages, images=images or None)
        state = _Dialogue(messages=messages, images=images, prompt_ids=prompt_ids, runtime_ids=list(prompt_ids))
        user_turn = _first_user_turn(messages)

        while True:
            if not await self._reply(state, user_turn, sampling_params, request_id, metrics):
                break
            if self.max_turns and state.diagnostics.assistant_turns >= self.max_turns:
                state.diagnostics.stop_reason = "max_turns"
                break
            try:
                user_turn = await self._next_user_turn(state, script, goal)
            except SimulatorFailed as failure:
                logger.warning("dialogue %s: %s", dialogue_id, failure)
                state.diagnostics.stop_reason = "simulator_failed"
                state.diagnostics.simulator_failed = True
                state.diagnostics.simulator_error = failure.kind
                break
            if user_turn is None:
                state.diagnostics.stop_reason = "script_end"
                break
            if not await self._append_user_turn(state, user_turn):
                break

        return self._output(state, metrics)

    async def _reply(
        self,
        state: _Dialogue,
        user_turn: UserTurn,
        sampling_params: dict[str, Any],
        request_id: str,
        metrics: dict[str, Any],
    ) -> bool:
        """Generate one reply and merge it; False when the dialogue must end after it."""
        remaining = self.response_length - len(state.response_mask) - 1  # keep the trailing slot free
        if remaining <= 0:
            state.diagnostics.stop_reason = "budget"
            state.diagnostics.truncated = True
            return False
        max_tokens = min(remaining, self.max_reply_tokens or remaining)
        with simple_timer("generate_sequences", metrics):
            output = await self.server_manager.generate(
                request_id=request_id,
                prompt_ids=state.runtime_ids,
                sampling_params={**sampling_params, "max_tokens": max_tokens},
                image_data=state.images or None,
            )
        if not output.token_ids:
            raise RuntimeError(f"{AGENT_NAME}: the generation backend returned no tokens (max_tokens={max_tokens})")
        self._merge_server_extra_fields(state, output.extra_fields)
        if not output.log_probs:
            state.response_logprobs = None
        mask_before = len(state.response_mask)
        merge, mask, logprobs = await self.ct_merge_assistant_token(
            state.runtime_ids,
            output.token_ids,
            state.response_mask,
            state.response_logprobs,
            assistant_logprobs=output.log_probs if state.response_logprobs is not None else None,
        )
        state.runtime_ids, state.response_mask, state.response_logprobs = merge.token_ids, mask, logprobs
        start = mask_before + len(merge.inserted_token_ids)
        reply = self.tokenizer.decode(output.token_ids, skip_special_tokens=True)
        hit_limit = len(output.token_ids) >= max_tokens and (not output.token_ids or output.token_ids[-1] not in self.end_of_turn_ids)
        state.records.append(
            AssistantTurnRecord(
                turn=len(state.records),
                user_text=user_turn.text,
                user_images=user_turn.images,
                reply=reply,
                span=(start, len(state.response_mask)),
                truncated=hit_limit,
                empty=not reply.strip(),
                user_source=user_turn.source,
            )
        )
        state.history.append((user_turn, reply))
        state.messages.append({"role": "assistant", "content": reply})
        state.diagnostics.assistant_turns += 1
        if hit_limit and max_tokens == remaining:
            state.diagnostics.stop_reason = "budget"
            state.diagnostics.truncated = True
            return False
        state.reply_open = hit_limit
        return True

    async def _next_user_turn(self, state: _Dialogue, script: list[UserTurn], goal: str) -> Optional[UserTurn]:
        replayed = state.diagnostics.user_turns
        if self.user_source != "simulate" and replayed < len(script):
            return script[replayed]
        if self.simulator is None:
            return None
        return await self.simulator.next_turn(goal, state.history)

    async def _append_user_turn(self, state: _Dialogue, user_turn: UserTurn) -> bool:
        """Merge the user turn if it fits (image spans whole); False (and flags) when it does not."""
        message = self._user_message(user_turn)
        new_images = [block["image"] for block in message["content"] if block.get("type") == "image"]
        self._assert_mm_supported(bool(new_images))
        updated = state.messages + [message]
        runtime_ids, response_mask, response_logprobs = state.runtime_ids, state.response_mask, state.response_logprobs
        if state.reply_open:  # close the cut reply (mask 0) so the user turn follows a well-formed boundary
            runtime_ids, response_mask = runtime_ids + [self.tokenizer.eos_token_id], response_mask + [0]
            response_logprobs = response_logprobs + [0.0] if response_logprobs is not None else None
        merge, mask, logprobs = await self.ct_merge_context_msg(state.messages, updated, runtime_ids, response_mask, response_logprobs)
        if len(mask) + 2 > self.response_length:  # the next reply needs >= 1 token, plus the slot
            state.diagnostics.stop_reason = "budget"
            state.diagnostics.truncated = True
            state.diagnostics.dropped_user_turn_tokens = len(mask) - len(state.response_mask)
            return False
        state.messages = updated
        state.runtime_ids, state.response_mask, state.response_logprobs = merge.token_ids, mask, logprobs
        state.reply_open = False
        state.images.extend(new_images)
        state.diagnostics.user_turns += 1
        return True

    @staticmethod
    def _user_message(user_turn: UserTurn) -> dict[str, Any]:
        """An OpenAI-style user message with one image block per ``<image>`` placeholder.

        Like verl's ``ToolAgentLoop`` with tool images, the decoded images go to the processor as they
        are; its own min/max pixel bounds size them (identically at rollout and at training).
        """
        pil_images = iter(user_turn.pil_images())
        content: list[dict[str, Any]] = []
        for segment in re.split(f"({re.escape(IMAGE_PLACEHOLDER)})", user_turn.text):
            if segment == IMAGE_PLACEHOLDER:
                content.append({"type": "image", "image": next(pil_images)})
            elif segment:
                content.append({"type": "text", "text": segment})
        return {"role": "user", "content": content}

    @staticmethod
    def _merge_server_extra_fields(state: _Dialogue, extra_fields: dict[str, Any]) -> None:
        if not state.server_extra_fields:
            state.server_extra_fields.update(extra_fields)
        elif extra_fields.get("max_global_steps") is not None:
            state.server_extra_fields["max_global_steps"] = extra_fields["max_global_steps"]

    def _output(self, state: _Dialogue, metrics: dict[str, Any]) -> DialogueAgentLoopOutput:
        response_ids = state.runtime_ids[len(state.prompt_ids) :] + [self.slot_token_id]
        response_mask = state.response_mask + [0]
        response_logprobs = state.response_logprobs + [0.0] if state.response_logprobs is not None else None
        if len(response_ids) > self.response_length:
            raise RuntimeError(f"{AGENT_NAME}: response of {len(response_ids)} tokens exceeds the budget")
        metrics.setdefault("num_preempted", -1)
        extra_fields = {
            **state.server_extra_fields,  # min_global_steps / max_global_steps, as verl's loops copy them
            "turn_scores": [],
            "tool_rewards": [],
            "am3_turns": [record.model_dump() for record in state.records],
            "am3_dialogue": asdict(state.diagnostics),
        }
        return DialogueAgentLoopOutput(
            prompt_ids=state.prompt_ids,
            response_ids=response_ids,
            response_mask=response_mask,
            response_logprobs=response_logprobs,
            multi_modal_data={"images": state.images} if state.images else {},
            num_turns=state.diagnostics.user_turns + state.diagnostics.assistant_turns + 1,
            metrics=AgentLoopMetrics(**metrics),
            extra_fields=extra_fields,
        )
