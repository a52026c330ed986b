"""Keys through `eval run`: a judge key echoed back encoded never reaches results.jsonl, report.html or the
logs; credentials in a URL together with a key are refused before any request."""

from __future__ import annotations

import html
import json
import logging
import re

import pytest

from am3_verl.eval.cli import main
from am3_verl.testing.openai_server import FaultPlan, LoopbackOpenAIServer
from eval_helpers import EvalJudge, ScriptedModel

SECRET = "sk-eval/j4dge+key&9d8c7b6a5f"
ECHOES = {
    "json_u_escape": lambda key: f"\\u{ord(key[0]):04x}" + key[1:],  # "\u0073k-eval/..."
    "html_entities": lambda key: f"&#x{ord(key[0]):x};" + html.escape(key[1:]),  # "&#x73;k-eval/...&amp;..."
}


def _key_pieces(text: str, width: int = 8) -> set[str]:
    """Pieces of the key readable in ``text`` as written, or with its JSON and HTML escapes undone."""
    unescaped = re.sub(r"\\u([0-9a-fA-F]{4})", lambda m: chr(int(m.group(1), 16)), text).replace("\\/", "/")
    views = (text, unescaped, html.unescape(text), html.unescape(unescaped))
    pieces = {SECRET[i : i + width] for i in range(len(SECRET) - width + 1)}
    return {piece for piece in pieces for view in views if piece in view}


@pytest.mark.parametrize("echo", sorted(ECHOES))
def test_a_judge_key_echoed_encoded_stays_out_of_the_outputs(echo, safemt_fixture, model_server, tmp_path, monkeypatch, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("AM3_JUDGE_API_KEY", SECRET)
    encode = ECHOES[echo]

    def error_body(headers) -> str:
        return '{"error": {"message": "key ' + encode(headers["Authorization"].removeprefix("Bearer ")) + ' is not valid here"}}'

    plan = FaultPlan(p_http_500=1.0, error_body=error_body)
    with LoopbackOpenAIServer(EvalJudge(), plan, model="rule-judge", api_key=SECRET) as judge:
        out = tmp_path / echo
        args = ["run", "--data", str(safemt_fixture[0]), "--model", model_server.base_url, "--output_dir", str(out),
                "--judge_backend", "openai", "--judge_base_url", judge.base_url, "--judge_model", judge.model,
                "--judge_max_attempts", "1", "--max_failure_rate", "1.0", "--no_progress", "--bootstrap", "20"]  # fmt: skip
        assert main(args) == 0
        assert judge.stats().faults["http_500"] == 3  # authorised with the key, which came back in every error
    printed = capsys.readouterr()
    errors = [t["verdict"]["error"] for item in map(json.loads, (out / "results.jsonl").read_text().splitlines()) for t in item["turns"]]
    assert len(errors) == 3 and all("key *** is not valid here" in e for e in errors), errors
    outputs = {path.name: path.read_text() for path in out.rglob("*") if path.suffix in (".jsonl", ".json", ".html")}
    assert {"results.jsonl", "report.html", "metrics.json"} <= outputs.keys()
    for where, text in {**outputs, "logs": caplog.text, "stdout": printed.out, "stderr": printed.err}.items():
        assert _key_pieces(text) == set(), f"the judge key leaked into {where}"


def test_url_credentials_with_a_key_are_refused_before_any_request(safemt_fixture, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("AM3_EVAL_API_KEY", SECRET)
    with LoopbackOpenAIServer(ScriptedModel(), model="policy") as model:
        url = model.base_url.replace("http://", "http://evaluser:url-pass-77aa@")
        args = ["run", "--data", str(safemt_fixture[0]), "--model", url, "--output_dir", str(tmp_path / "out"),
                "--judge_backend", "heuristic", "--no_progress"]  # fmt: skip
        assert main(args) == 2
        stats = model.stats()
    err = capsys.readouterr().err
    assert "user:password@" in err and "AM3_EVAL_API_KEY" in err, err
    assert "url-pass-77aa" not in err and "evaluser" not in err and not _key_pieces(err)
    assert stats.total == 0 and stats.models_requests == 0  # refused before listing the models, too
