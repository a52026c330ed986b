"""The judge's startup probe against real loopback servers, and the failure budget's arithmetic."""

import math
import time
from collections import Counter

import pytest

from am3_verl.testing.openai_server import FaultPlan, LoopbackOpenAIServer, RuleJudgeResponder
from am3_verl.training.config import Am3TrainerConfig
from am3_verl.training.judge_health import (
    PROBE_USER_TEXT,
    JudgeFailureBudget,
    JudgeUnavailable,
    failure_kinds,
    judge_config_of,
    probe_judge,
)


def judge_kwargs(server, **extra):
    return {"backend": "openai", "base_url": server.base_url, "model": server.model, "backoff_initial_s": 0.05, **extra}


def test_the_probe_passes_on_a_working_judge_and_its_request_is_recognisable():
    with LoopbackOpenAIServer(RuleJudgeResponder(), model="judge") as server:
        probe_judge(judge_config_of(judge_kwargs(server)))
        (request,) = server.last_requests()
    assert PROBE_USER_TEXT in str(request.body)


def test_the_probe_fails_at_once_on_a_wrong_key(monkeypatch):
    monkeypatch.setenv("AM3_JUDGE_API_KEY", "sk-wrong-key-0123")
    with LoopbackOpenAIServer(RuleJudgeResponder(), model="judge", api_key="sk-right") as server:
        start = time.perf_counter()
        with pytest.raises(JudgeUnavailable) as caught:
            probe_judge(judge_config_of(judge_kwargs(server)))
        assert time.perf_counter() - start < 5
        assert server.stats().total == 1  # a 401 is not retried
        url = server.base_url
    message = str(caught.value)
    assert "startup probe" in message and "http_4xx" in message and url in message
    assert "sk-wrong-key-0123" not in message


def test_the_probe_fails_on_an_unreachable_url():
    with LoopbackOpenAIServer(RuleJudgeResponder(), model="judge") as server:
        kwargs = judge_kwargs(server, max_attempts=2)
    with pytest.raises(JudgeUnavailable, match="connect"):
        probe_judge(judge_config_of(kwargs))  # the server is gone: nothing listens on its port


def test_the_probe_retries_a_judge_that_is_briefly_down():
    with LoopbackOpenAIServer(RuleJudgeResponder(), FaultPlan(schedule=["http_500", "http_500"]), model="judge") as server:
        probe_judge(judge_config_of(judge_kwargs(server)))
        assert server.stats().faults["http_500"] == 2 and server.stats().served == 1


def test_reward_kwargs_without_a_backend_are_another_reward_functions():
    assert judge_config_of({"helpful_weight": 1.0}) is None
    assert judge_config_of(None) is None


def test_the_budget_stops_at_consecutive_failed_steps_only():
    budget = JudgeFailureBudget(max_failure_rate=0.2, max_failed_steps=2)
    assert not budget.observe(1, 0.5, Counter(http_5xx=4))
    assert not budget.observe(2, 0.2, Counter())  # at the threshold is within budget, and resets the run
    assert not budget.observe(3, math.nan, Counter())  # nothing judged: neither
    assert not budget.observe(4, 1.0, Counter(http_5xx=8))
    assert budget.observe(5, 0.75, Counter(connect=3, http_5xx=1))
    message = budget.stop_message("openai judge m at http://judge:8000/v1", "/ckpt/global_step_5")
    for part in ("http://judge:8000/v1", "step 4: 100%", "step 5: 75%", "http_5xx x9", "connect x3",
                 "/ckpt/global_step_5", "resume_mode=auto"):  # fmt: skip
        assert part in message, part


def test_failure_kinds_sum_the_rollouts_reward_extra_info():
    infos = [{"judge_failure_kinds": '{"http_5xx": 2}'}, {"judge_failure_kinds": "{}"}, None, {"other": 1},
             {"judge_failure_kinds": '{"http_5xx": 1, "timeout": 4}'}]  # fmt: skip
    assert failure_kinds(infos) == Counter(http_5xx=3, timeout=4)


def test_trainer_settings_are_checked_and_named():
    assert Am3TrainerConfig.from_mapping(None) == Am3TrainerConfig(max_judge_failure_rate=0.2, max_judge_failed_steps=2, probe_judge=True)
    with pytest.raises(ValueError, match="trainer.am3.max_judge_failure_rate"):
        Am3TrainerConfig.from_mapping({"max_judge_failure_rate": 1.5})
    with pytest.raises(ValueError, match="trainer.am3.max_failed"):
        Am3TrainerConfig.from_mapping({"max_failed": 1})
