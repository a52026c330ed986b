"""The dialogue environment's ``AgentLoopOutput``: places per-turn judge scores into ``rm_scores``.

verl's V1 trainer calls ``AgentLoopOutput.as_dict()`` after the streaming reward has stored the reward
function's ``reward_extra_info`` in ``extra_fields``. :class:`DialogueAgentLoopOutput` then writes the
per-turn scores into the token-reward row with :func:`am3_verl.turn_scores.encode_row`, so that the AM3
advantage estimator can read them back (the full contract is in :mod:`am3_verl.turn_scores`). Without
per-turn scores (e.g. a reward function that returns only a scalar) it behaves exactly like verl's class.
"""

from __future__ import annotations

from typing import Any

from verl.experimental.agent_loop.agent_loop import AgentLoopOutput

from am3_verl.turn_scores import EXTRA_INFO_KEY, encode_row, load_turn_scores


class DialogueAgentLoopOutput(AgentLoopOutput):
    """``AgentLoopOutput`` whose ``rm_scores`` carry one harmless and one helpful score per assistant turn."""

    def as_dict(self) -> dict[str, Any]:
        """verl's dict, with ``rm_scores`` rebuilt from ``reward_extra_info[EXTRA_INFO_KEY]`` when present."""
        output = super().as_dict()
        reward_extra_info = output.get("extra_fields", {}).get("reward_extra_info") or {}
        encoded = reward_extra_info.get(EXTRA_INFO_KEY)
        if encoded is not None:
            output["rm_scores"] = encode_row(output["response_mask"], load_turn_scores(encoded))
        return output
