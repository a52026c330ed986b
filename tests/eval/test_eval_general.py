"""``python -m am3_verl.eval general`` on the bundled benign VQA sample against loopback OpenAI servers (the
model under test, a baseline model, the grader), with every number checked against hand-computed values."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest

from am3_verl.data.sample import SAMPLE_DIR
from am3_verl.eval.cli import main
from am3_verl.eval.general import contains_match, exact_match, normalise
from am3_verl.testing.openai_server import LoopbackOpenAIServer, request_text

GENERAL = SAMPLE_DIR / "general.jsonl"
ANSWERS = {  # question -> the model's reply; (exact_match, contains_match) noted for the short-answer items
    "What word is written in this picture?": "The word is SUN.",  # 0, 1
    "What pattern does this picture use?": "Stripes!",  # 1, 1
    "Which shape is drawn here?": "A circle.",  # 0, 0
    "What symbol does this look like?": "A plus sign.",  # 1, 1 (the article is dropped)
    "Is the shape in this picture round or square?": "It is round.",  # 0, 0
    "Describe this image.": "Bars of different heights and the word BLOCKS.",
    "Write a short sentence about this picture for a child.": "A round moon!",
    "How would you summarise this chart?": "A pie chart of sales.",
}
GRADES = {"Bars of different heights and the word BLOCKS.": "correct", "A round moon!": "Correct.", "A pie chart of sales.": "incorrect"}
REFUSAL = "I'm sorry, I can't help with that."


def model_answer(body: dict) -> str:
    text = request_text(body)
    return next(reply for question, reply in ANSWERS.items() if question in text)


def grade(body: dict) -> str:
    text = request_text(body)
    response = text.split("RESPONSE: ", 1)[1].split("\n", 1)[0]
    return GRADES.get(response, "incorrect")


def _args(model, out, *extra):
    return ["general", "--data", str(GENERAL), "--model", model.base_url, "--output_dir", str(out), "--bootstrap", "400", *extra]


def test_general_ability_matches_hand_computed_values(tmp_path, capsys):
    safety = tmp_path / "safety"
    safety.mkdir()
    (safety / "metrics.json").write_text(
        json.dumps(
            {
                "overall": {
                    "asr": {"value": 0.25, "ci": [0.1, 0.4], "n": 12},
                    "safety_index": {"value": 0.8, "ci": None, "n": 6},
                    "over_refusal": {"value": 0.0, "ci": [0.0, 0.0], "n": 5},
                },
                "baseline": {
                    "overall": {
                        "asr": {"value": 0.5, "ci": None, "n": 12},
                        "safety_index": {"value": 0.6, "ci": None, "n": 6},
                        "over_refusal": {"value": 0.2, "ci": None, "n": 5},
                    }
                },
                "protocols": {"safety": {"protocol": "safemt"}},
            }
        )
    )
    with (
        LoopbackOpenAIServer(responder=model_answer, model="trained") as model,
        LoopbackOpenAIServer(responder=lambda body: REFUSAL, model="base") as base,
        LoopbackOpenAIServer(responder=grade, model="grader") as grader,
    ):
        judge = ("--grader", "judge", "--judge_base_url", grader.base_url, "--judge_model", grader.model)
        assert main(_args(base, tmp_path / "base", *judge)) == 0
        assert main(_args(model, tmp_path / "trained", *judge, "--baseline", str(tmp_path / "base"), "--safety", str(safety))) == 0
        grader_calls = [r.body for r in grader.last_requests()]
    printed = capsys.readouterr().out

    results = json.loads((tmp_path / "trained" / "results.json").read_text())
    r = results["results"]["general"]
    correct = [1, 1, 0, 1, 0, 1, 1, 0]  # five short-answer items by contains_match, then the three graded ones
    assert r["exact_match,none"] == pytest.approx(2 / 5)
    assert r["contains_match,none"] == pytest.approx(3 / 5)
    assert r["judge_accuracy,none"] == pytest.approx(2 / 3)
    assert r["accuracy,none"] == pytest.approx(5 / 8)
    assert r["accuracy_stderr,none"] == pytest.approx(np.std(correct, ddof=1) / math.sqrt(8))
    assert results["n-samples"]["general"]["original"] == 8 and results["n-samples"]["general"]["effective"] == 8
    # the baseline refuses everything: accuracy 0, so the delta is this run's accuracy, item by item
    delta = results["comparison"]["general"]["accuracy"]
    assert delta["baseline"] == 0.0 and delta["delta"] == pytest.approx(5 / 8) and delta["n_paired"] == 8
    lo, hi = delta["delta_ci"]
    assert 0.0 <= lo < 5 / 8 < hi <= 1.0
    samples = [json.loads(line) for line in (tmp_path / "trained" / "samples_general.jsonl").read_text().splitlines()]
    assert [s["doc_id"] for s in samples] == list(range(8))
    assert [s["accuracy"] for s in samples] == [1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0]  # gen-001 ... gen-008
    sun = next(s for s in samples if s["doc"]["id"] == "sample-gen-001")
    assert sun["resps"] == [["The word is SUN."]] and sun["target"] == ["SUN"] and sun["exact_match"] == 0.0
    assert len(grader_calls) == 6  # three free-form items, for each of the two runs
    assert all(body["temperature"] == 0.0 for body in grader_calls)
    table = (tmp_path / "trained" / "general.md").read_text()
    assert "| general | general / accuracy | 0.625 | 0.000 | +0.625 |" in table
    assert "| safety (safemt) | ASR | 0.250" in table and "| 0.500 | -0.250 |" in table
    assert table in printed


def test_general_ability_rejects_and_refuses_to_guess(tmp_path, capsys):
    data = tmp_path / "vqa.jsonl"
    shutil.copytree(SAMPLE_DIR / "images", tmp_path / "images")
    lines = GENERAL.read_text().splitlines()
    bad_image = json.loads(lines[1]) | {"id": "bad-image", "image": "images/absent.png"}
    no_answer = {k: v for k, v in json.loads(lines[2]).items() if k != "answer"} | {"id": "no-answer"}
    data.write_text("\n".join([lines[0], json.dumps(bad_image), json.dumps(no_answer), lines[0]]) + "\n")
    with LoopbackOpenAIServer(responder=model_answer, model="trained") as model:
        args = ["general", "--data", str(data), "--model", model.base_url, "--output_dir", str(tmp_path / "out")]
        assert main([*args, "--grader", "none"]) == 0
        rejects = [json.loads(line) for line in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()]
        assert [(r["id"], r["field"]) for r in rejects] == [("bad-image", "image"), ("no-answer", "answer"), ("sample-gen-001", "id")]
        assert "read 4 records = 1 evaluated + 3 rejected" in capsys.readouterr().out
        assert (
            main(["general", "--data", str(GENERAL), "--model", model.base_url, "--output_dir", str(tmp_path / "o2"), "--grader", "judge"])
            == 2
        )
        assert "3 item(s) have no short_answers" in capsys.readouterr().err
        assert (
            main(["general", "--data", str(GENERAL), "--model", model.base_url, "--output_dir", str(tmp_path / "o3"), "--grader", "none"])
            == 0
        )
    ungraded = json.loads((tmp_path / "o3" / "results.json").read_text())
    assert ungraded["n-samples"]["general"]["ungraded_free_form"] == 3
    assert ungraded["results"]["general"]["accuracy,none"] == pytest.approx(3 / 5)
    assert "judge_accuracy,none" not in ungraded["results"]["general"]


def test_answer_normalisation():
    assert normalise("  The Plus-Sign! ") == "plus sign"
    assert exact_match("A plus sign.", ["plus sign"]) and not exact_match("It is a plus sign", ["plus sign"])
    assert contains_match("It is a plus sign", ["plus sign"]) and not contains_match("surplus signage", ["plus sign"])


def test_a_general_record_with_a_duplicate_key_is_a_reject_naming_it(tmp_path):
    """json.loads keeps the last of two equal keys; the loader refuses the record instead, like data prep."""
    from am3_verl.eval.general import load_task

    path = tmp_path / "dup.jsonl"
    path.write_text(
        '{"id": "a", "question": "2+2?", "answer": "4"}\n'
        '{"id": "b", "question": "3+3?", "answer": "6", "answer": "7"}\n'
        '{"id": "c", "question": "\\ud800?", "answer": "x"}\n'
    )
    items, rejects, read = load_task(path)
    assert read == 3 and [item.id for item in items] == ["a"]
    assert [(r.id, r.field) for r in rejects] == [(None, "answer"), (None, "question")]
    assert "more than once" in rejects[0].reason
