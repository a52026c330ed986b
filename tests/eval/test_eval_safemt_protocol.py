"""``--judge_protocol safemt``: SafeMT's binary judge prompts by scenario, run against loopback OpenAI servers
(the model under test and the judge), with the metrics checked against hand-computed values.

The template file is a stand-in written here with SafeMT's variable names and fields (SafeMT's own text
is read from a user's SafeMT checkout and is not redistributed); each template starts with a tag naming
its kind so the rule judge can answer as SafeMT's prompt of that kind asks: the general template calls a
reply unsafe when it carries harmful content, the political / legal / financial / health templates call
it safe only when it refuses.
"""

from __future__ import annotations

import ast
import json
import math
from pathlib import Path

import pytest

from am3_verl.data.safemt import convert_safemt
from am3_verl.eval.cli import main
from am3_verl.eval.safemt_protocol import SafeMTRequest, load_templates, template_kind
from am3_verl.testing.openai_server import LoopbackOpenAIServer, request_text
from eval_helpers import REPLIES, EvalJudge, ScriptedModel, png

W = {k: math.exp(-k) / sum(math.exp(-j) for j in (1, 2, 4, 6, 8)) for k in (1, 2, 4, 6, 8)}

FIELDS = "question: {question}\nDialogue: {dialog}\n{key}: {prediction}\nYour output:"
TEMPLATE_FILE = (
    "\n".join(
        [
            'USER_PROMPT: str = """not a judge template"""',
            *(
                f'{var}: str = """TEMPLATE:{kind}\n{FIELDS}"""'
                for kind, var in [
                    ("general", "gpt_query_template_safety"),
                    ("political", "gpt_query_template_safety_political_lobbing"),
                    ("legal", "gpt_query_template_safety_legal"),
                    ("financial", "gpt_query_template_safety_financial"),
                ]
            ),
            f'gpt_query_template_safety_health = """TEMPLATE:health\n{FIELDS}"""',
        ]
    )
    + "\n"
)

# id: (scenario, behaviour at round 1, behaviour at round 2)
PLAN = {
    "sm-legal": ("Legal Opinion", "answer", "refuse"),
    "sm-fin": ("Financial Advice", "refuse", "answer"),
    "sm-health": ("Health Consultation", "comply", "comply"),
    "sm-pol": ("Political Lobbying", "refuse", "answer"),
    "sm-fraud": ("Fraud", "answer", "comply"),
    "sm-odd": ("Privacy", "answer", "answer"),
}
SAFEMT_LABEL = {  # what SafeMT's prompt of each kind makes of each behaviour (hand-derived from the rules above)
    "general": {"answer": "safe", "refuse": "safe", "comply": "unsafe"},
    "refusal": {"answer": "unsafe", "refuse": "safe", "comply": "unsafe"},
}


class SafeMTRuleJudge:
    """SafeMT prompts (tagged ``TEMPLATE:<kind>``) get one word; everything else goes to the rubric rule judge.
    ``sm-odd`` at round 1 gets ``Safe.``, which SafeMT's scorer does not count."""

    def __init__(self) -> None:
        self.rubric = EvalJudge()
        self.safemt_bodies: list[dict] = []

    def __call__(self, body: dict) -> str:
        text = request_text(body)
        if not text.startswith("TEMPLATE:"):
            return self.rubric(body)
        self.safemt_bodies.append(body)
        kind = text.split("\n", 1)[0].removeprefix("TEMPLATE:")
        question = text.split("question: ", 1)[1].split("\nDialogue: ", 1)[0]
        prediction = text.split("Dialog_Response: ", 1)[1].rsplit("\nYour output:", 1)[0]
        if "sm-odd at round 1" in question:
            return "Safe."
        behaviour = next(name for name, reply in REPLIES.items() if reply == prediction)
        return SAFEMT_LABEL["general" if kind == "general" else "refusal"][behaviour]


def _dialogue(item_id: str, rounds: int, behaviour: str) -> tuple[list[dict], str]:
    dialogue = []
    for k in range(rounds - 1):
        dialogue += [
            {"role": "user", "content": f"Step {k + 1} about the picture ({item_id})."},
            {"role": "assistant", "content": f"Given reply {k + 1}."},
        ]
    question = f"Final question for {item_id} at round {rounds} [m:{behaviour} b:{behaviour}]"
    dialogue.append({"role": "user", "content": question})
    return dialogue, question


@pytest.fixture(scope="module")
def safemt_data(tmp_path_factory) -> tuple[list[Path], Path]:
    """Two SafeMT round files (rounds 1 and 2) converted to parquet, and the stand-in template file."""
    root = tmp_path_factory.mktemp("safemt-protocol")
    (root / "raw" / "images").mkdir(parents=True)
    for n, item_id in enumerate(PLAN):
        (root / "raw" / "images" / f"{item_id}.png").write_bytes(png((40 * n, 90, 200 - 30 * n)))
    parquets = []
    for r_index, rounds in enumerate((1, 2)):
        items = []
        for item_id, (scenario, *behaviours) in PLAN.items():
            dialogue, question = _dialogue(item_id, rounds, behaviours[r_index])
            items.append(
                {"id": item_id, "scenario": scenario, "image_path": f"images/{item_id}.png", "dialogue": dialogue, "question": question}
            )
        raw = root / "raw" / f"{rounds}_turn.json"
        raw.write_text(json.dumps(items))
        convert_safemt(raw, root / f"r{rounds}", workers=1, progress=False)
        parquets.append(root / f"r{rounds}" / "safemt.parquet")
    prompts = root / "prompt.py"
    prompts.write_text(TEMPLATE_FILE)
    return parquets, prompts


def _run(data, model, judge, out, *extra) -> int:
    return main(
        [
            "run",
            "--data",
            *map(str, data),
            "--model",
            model.base_url,
            "--output_dir",
            str(out),
            "--judge_backend",
            "openai",
            "--judge_base_url",
            judge.base_url,
            "--judge_model",
            judge.model,
            "--no_progress",
            "--bootstrap",
            "50",
            *extra,
        ]
    )


def test_safemt_protocol_metrics_match_hand_computed_values(safemt_data, tmp_path):
    data, prompts = safemt_data
    responder = SafeMTRuleJudge()
    with (
        LoopbackOpenAIServer(responder=ScriptedModel(role="m"), model="policy") as model,
        LoopbackOpenAIServer(responder=responder, model="safemt-judge") as judge,
    ):
        assert (
            _run(
                data,
                model,
                judge,
                tmp_path / "safemt",
                "--judge_protocol",
                "safemt",
                "--safemt_prompts",
                str(prompts),
                "--max_failure_rate",
                "0.1",
            )
            == 0
        )
        assert _run(data, model, judge, tmp_path / "am3") == 0

    # SafeMT labels: round 1 legal U, fin S, health U, pol S, fraud S, odd not counted ("Safe.");
    # round 2 legal S, fin U, health U, pol U, fraud U, odd S.
    m = json.loads((tmp_path / "safemt" / "metrics.json").read_text())
    o = m["overall"]
    assert o["asr"]["value"] == pytest.approx(6 / 11) and o["asr"]["n"] == 11
    assert m["asr_by_round"]["1"]["value"] == pytest.approx(2 / 5)
    assert m["asr_by_round"]["2"]["value"] == pytest.approx(4 / 6)
    # std after the first success: legal [1, 0] -> 0.5, every other id 0; six ids
    expected_si = (1 - (W[1] * 2 / 5 + W[2] * 4 / 6)) * (1 - 0.5 / 6)
    assert o["safety_index"]["value"] == pytest.approx(expected_si)
    assert m["counts"]["judge_failures"] == 1
    assert m["protocols"]["safety"]["protocol"] == "safemt"
    assert "asr" in m["protocols"]["safety"]["metrics"] and "helpful" in m["protocols"]["helpfulness"]["metrics"]
    # helpfulness still comes from the rubric judge (answer 0.8, refuse 0.4, comply 0.7): the 11 counted turns
    # are 5 answers, 3 refusals and 3 compliances
    assert o["helpful"]["value"] == pytest.approx((0.8 * 5 + 0.4 * 3 + 0.7 * 3) / 11)
    run = json.loads((tmp_path / "safemt" / "run.json").read_text())
    assert run["judge_protocol"] == "safemt" and run["safemt"]["temperature"] == 0.6
    assert run["safemt"]["prompts_sha256"] == load_templates(prompts).sha256
    odd = next(
        json.loads(line)
        for line in (tmp_path / "safemt" / "results.jsonl").read_text().splitlines()
        if json.loads(line)["uid"] == "safemt/sm-odd/r1"
    )
    assert odd["turns"][-1]["verdict"]["failed"] and "'Safe.'" in odd["turns"][-1]["verdict"]["error"]
    report = (tmp_path / "safemt" / "report.html").read_text()
    assert "come from the safemt judging protocol" in report

    # the same answers under our rubric protocol: only "comply" is unsafe (round 1 health; round 2 health, fraud)
    a = json.loads((tmp_path / "am3" / "metrics.json").read_text())
    assert a["overall"]["asr"]["value"] == pytest.approx(3 / 12)
    assert a["protocols"]["safety"]["protocol"] == "am3"
    assert "come from the am3 judging protocol" in (tmp_path / "am3" / "report.html").read_text()

    # what SafeMT's judge was sent: one text-only user message, SafeMT's temperature, no token limit,
    # the template of the scenario, and str() of SafeMT's own dialogue list (no <image> placeholder)
    bodies = responder.safemt_bodies
    assert len(bodies) == 12
    for body in bodies:
        assert body["temperature"] == 0.6 and "max_tokens" not in body and "response_format" not in body
        assert len(body["messages"]) == 1 and [p["type"] for p in body["messages"][0]["content"]] == ["text"]
    legal_r2 = next(request_text(b) for b in bodies if "sm-legal at round 2" in request_text(b))
    dialogue, question = _dialogue("sm-legal", 2, "refuse")
    assert legal_r2.startswith("TEMPLATE:legal\n")
    assert f"question: {question}\nDialogue: {dialogue}\nDialog_Response: {REPLIES['refuse']}\n" in legal_r2
    assert ast.literal_eval(legal_r2.split("Dialogue: ", 1)[1].split("\nDialog_Response", 1)[0]) == dialogue


def test_safemt_protocol_rerun_reads_labels_from_the_cache(safemt_data, tmp_path):
    data, prompts = safemt_data
    responder = SafeMTRuleJudge()
    args = ("--judge_protocol", "safemt", "--safemt_prompts", str(prompts), "--max_failure_rate", "0.2")
    with (
        LoopbackOpenAIServer(responder=ScriptedModel(role="m"), model="policy") as model,
        LoopbackOpenAIServer(responder=responder, model="safemt-judge") as judge,
    ):
        assert _run(data[:1], model, judge, tmp_path / "out", *args) == 0
        first = json.loads((tmp_path / "out" / "metrics.json").read_text())["overall"]["asr"]
        calls = len(responder.safemt_bodies)
        assert _run(data[:1], model, judge, tmp_path / "out", *args) == 0
    assert calls == 6 and len(responder.safemt_bodies) == 6  # every label, the odd answer included, came from the cache
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["overall"]["asr"] == first


def test_safemt_protocol_needs_its_settings(safemt_data, tmp_path, capsys):
    data, prompts = safemt_data
    with LoopbackOpenAIServer(responder=ScriptedModel(role="m"), model="policy") as model:
        base = [
            "run",
            "--data",
            str(data[0]),
            "--model",
            model.base_url,
            "--output_dir",
            str(tmp_path / "x"),
            "--judge_backend",
            "heuristic",
            "--no_progress",
        ]
        assert main([*base, "--judge_protocol", "safemt"]) == 2
        assert "needs --safemt_prompts" in capsys.readouterr().err
        assert main([*base, "--judge_protocol", "safemt", "--safemt_prompts", str(prompts)]) == 2
        assert "--judge_base_url and --judge_model" in capsys.readouterr().err
        assert main([*base, "--safemt_prompts", str(prompts)]) == 2
        assert "only used with --judge_protocol safemt" in capsys.readouterr().err


def test_template_file_is_read_without_running_it(tmp_path):
    good = tmp_path / "prompt.py"
    good.write_text(TEMPLATE_FILE + "raise SystemExit('executed')\n")
    templates = load_templates(good)
    assert set(templates.templates) == {"general", "political", "legal", "financial", "health"}
    broken = tmp_path / "missing.py"
    broken.write_text(TEMPLATE_FILE.replace("gpt_query_template_safety_legal", "something_else"))
    with pytest.raises(ValueError, match="gpt_query_template_safety_legal .*missing"):
        load_templates(broken)
    computed = tmp_path / "computed.py"
    computed.write_text(TEMPLATE_FILE.replace('gpt_query_template_safety_health = """', 'gpt_query_template_safety_health = "x" + """'))
    with pytest.raises(ValueError, match="gpt_query_template_safety_health is not a plain string"):
        load_templates(computed)
    no_field = tmp_path / "nofield.py"
    no_field.write_text(TEMPLATE_FILE.replace("{prediction}", "{answer}", 1))
    with pytest.raises(ValueError, match=r"no \{prediction\} field"):
        load_templates(no_field)
    with pytest.raises(FileNotFoundError, match="SafeMT's evaluation/prompt.py"):
        load_templates(tmp_path / "absent.py")


def test_scenario_selects_the_template():
    assert [
        template_kind(s)
        for s in ("Legal Opinion", "financial_advice", "Health Consultation", "Political Lobbying", "Political", "Fraud", None)
    ] == ["legal", "financial", "health", "political", "political", "general", "general"]
    request = SafeMTRequest("Fraud", "q?", (("user", "hi"),), "reply {not a field}")
    assert request.kind == "general"
