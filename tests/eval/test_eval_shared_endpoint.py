"""One server serving both the model under evaluation and the judge (one vLLM server on a small setup):
`eval run` works under one announced limit on requests to it, the smaller of the two it was given."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from am3_verl.eval.cli import main
from am3_verl.judges.rubric import SYSTEM_PROMPT
from am3_verl.testing.openai_server import FaultPlan, LoopbackOpenAIServer
from eval_helpers import EvalJudge, ScriptedModel


class ModelAndJudge:
    """One served model playing both roles: the rubric judge for rubric requests, the scripted model otherwise."""

    def __init__(self) -> None:
        self.model, self.judge = ScriptedModel(role="m"), EvalJudge()
        self.calls = {"model": 0, "judge": 0}

    def __call__(self, body: dict) -> str:
        first = body["messages"][0]
        if first["role"] == "system" and first["content"] == SYSTEM_PROMPT:
            self.calls["judge"] += 1
            return self.judge(body)
        self.calls["model"] += 1
        return self.model(body)


def _run(data: list[Path], server: LoopbackOpenAIServer, out: Path, *extra: str) -> int:
    return main(
        ["run", "--data", *map(str, data), "--model", server.base_url, "--output_dir", str(out), "--judge_backend", "openai",
         "--judge_base_url", server.base_url, "--judge_model", server.model, "--no_progress", "--bootstrap", "50", *extra]
    )  # fmt: skip


def _announcements(caplog, base_url: str) -> list[str]:
    messages = [r.getMessage() for r in caplog.records]
    return [m for m in messages if "serves both the model and the judge" in m and f"shared-vlm at {base_url}" in m]


def test_one_endpoint_for_the_model_and_the_judge_runs_under_one_announced_limit(safemt_fixture, tmp_path, caplog, capsys):
    caplog.set_level(logging.INFO)
    roles = ModelAndJudge()
    with LoopbackOpenAIServer(roles, FaultPlan(latency_s=0.05), model="shared-vlm") as server:
        out = tmp_path / "shared"
        assert _run(safemt_fixture, server, out, "--concurrency", "4", "--judge_concurrency", "8") == 0, capsys.readouterr().err
        peak, base_url = server.stats().max_in_flight, server.base_url
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["counts"]["judge_failures"] == 0 and metrics["counts"]["generation_failures"] == 0
    assert metrics["counts"]["judged_turns"] == 15 and roles.calls == {"model": 15, "judge": 15}
    # one limit over both roles, the smaller one, announced once before the first call
    assert 1 <= peak <= 4
    announced = _announcements(caplog, base_url)
    assert len(announced) == 1 and "one limit of 4 requests on the wire" in announced[0], caplog.text
    assert "Check the endpoint" not in capsys.readouterr().err


def test_the_default_limits_of_a_shared_endpoint_also_work(safemt_fixture, tmp_path, caplog):
    """The reported case: --concurrency (32) and the judge's default 256 on one server."""
    caplog.set_level(logging.INFO)
    with LoopbackOpenAIServer(ModelAndJudge(), model="shared-vlm") as server:
        out = tmp_path / "defaults"
        assert _run(safemt_fixture[:2], server, out) == 0
        base_url = server.base_url
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["counts"]["judge_failures"] == 0 and metrics["counts"]["judged_turns"] == 6
    announced = _announcements(caplog, base_url)
    assert len(announced) == 1 and "one limit of 32 requests on the wire" in announced[0]
