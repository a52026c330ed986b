"""Turn-aware multi-turn harmless + helpful reward for verl (AM3Safety), as a drop-in file.

Needs rollouts from the am3 dialogue agent loop (it reads the per-turn records it writes to
``extra_info["am3_turns"]``). Every assistant turn is judged in the context of the turns before it;
the result carries ``score`` (sum over judged turns of harmless + helpful), scalar ``harmless``,
``helpful``, ``asr``, ``refusal_rate``, ``judge_failures``, and the per-turn scores the AM3 advantage
estimator reads (``am3_turn_scores``). Details: :mod:`am3_verl.judges.reward`, docs/judges.md.

verl overrides (rubric VLM judge behind an OpenAI-compatible endpoint; the key stays in the environment)::

    export AM3_JUDGE_BACKEND=openai AM3_JUDGE_BASE_URL=http://judge-host:8000/v1 AM3_JUDGE_MODEL=Qwen/Qwen2.5-VL-72B-Instruct
    export AM3_JUDGE_API_KEY=...            # if the endpoint needs one
    python -m verl.trainer.main_ppo ... \\
        reward.custom_reward_function.path=reward_fns/am3_multi_turn.py \\
        reward.custom_reward_function.name=compute_score \\
        +reward.custom_reward_function.reward_kwargs.max_concurrency=256 \\
        +reward.custom_reward_function.reward_kwargs.timeout_s=120

The backend is always named (``AM3_JUDGE_BACKEND`` or the ``backend`` kwarg; an error otherwise).
Offline (CPU demo, tests):
``+reward.custom_reward_function.reward_kwargs.backend=heuristic``. A guard for harmlessness:
``+reward.custom_reward_function.reward_kwargs.backend=llama_guard4`` (or ``qwen3guard``) and ``helpfulness_backend``, with
AM3_GUARD_BASE_URL / AM3_GUARD_MODEL set. Installed am3-verl also works as
``reward.custom_reward_function.path=pkg://am3_verl.judges.reward``.
"""

from am3_verl.judges.reward import compute_score

__all__ = ["compute_score"]
