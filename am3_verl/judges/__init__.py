"""Judges: score every assistant turn of a dialogue for harmlessness and helpfulness, on [0, 1].

* :mod:`~am3_verl.judges.base` – the protocol (:class:`JudgeRequest` in, :class:`TurnJudgment` out) and
  the shared de-duplication and caching every backend gets;
* the bounded, retrying OpenAI chat client they use is :mod:`am3_verl.clients.chat` (shared, not judge-specific);
* :mod:`~am3_verl.judges.format` / :mod:`~am3_verl.judges.rubric` – the rubric judge's quoting,
  verdict schema and prompt;
* backends: :mod:`~am3_verl.judges.openai_judge` (rubric VLM judge), :mod:`~am3_verl.judges.guards`
  (Llama Guard 4, Qwen3Guard-Gen, combined with a helpfulness judge), :mod:`~am3_verl.judges.heuristic`
  (offline keyword rules);
* :mod:`~am3_verl.judges.config` – reward kwargs + environment -> a process-wide judge;
* :mod:`~am3_verl.judges.reward` – verl ``compute_score`` functions (multi-turn and single-turn).
"""

from am3_verl.judges.base import DialogueTurn, Judge, JudgeRequest, TurnJudgment, requests_from_turns, turns_from_records
from am3_verl.judges.config import JudgeConfig, build_judge, get_judge, resolve_judge_config

__all__ = [
    "DialogueTurn",
    "Judge",
    "JudgeConfig",
    "JudgeRequest",
    "TurnJudgment",
    "build_judge",
    "get_judge",
    "requests_from_turns",
    "resolve_judge_config",
    "turns_from_records",
]
