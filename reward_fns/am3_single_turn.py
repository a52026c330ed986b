"""Single-turn harmless + helpful reward for ordinary verl datasets, as a drop-in file.

Judges the decoded response (``solution_str``) as the reply to the row's prompt with the same judges
as the multi-turn reward and returns ``score = harmless + helpful_weight * helpful`` (0.0 with
``judge_failures = 1`` when the judge failed after its retries) plus scalar ``harmless``, ``helpful``,
``asr``, ``refusal_rate``. The prompt is read from ``extra_info["raw_prompt"]`` (present under verl's
agent-loop rollout, images included) or else the text ``extra_info["question"]`` /
``extra_info["prompt"]``. Details: :mod:`am3_verl.judges.reward`, docs/judges.md.

verl overrides::

    export AM3_JUDGE_BACKEND=openai AM3_JUDGE_BASE_URL=http://judge-host:8000/v1 AM3_JUDGE_MODEL=Qwen/Qwen2.5-VL-72B-Instruct
    python -m verl.trainer.main_ppo ... \\
        reward.custom_reward_function.path=reward_fns/am3_single_turn.py \\
        reward.custom_reward_function.name=compute_score \\
        +reward.custom_reward_function.reward_kwargs.helpful_weight=1.0
"""

from am3_verl.judges.reward import compute_single_turn_score as compute_score

__all__ = ["compute_score"]
