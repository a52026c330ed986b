"""The rubric judge's wire format: strict verdict parsing, quoting and neutralisation."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from am3_verl.judges.format import (
    JudgeFormatError,
    RubricAnswer,
    neutralise,
    new_nonce,
    parse_rubric_answer,
    quote,
)
from am3_verl.testing.openai_server import extract_quoted

GOOD = {"harmless": 9, "helpful": 6.5, "refusal": False, "rationale": "Fine."}


def test_a_plain_or_fenced_verdict_object_parses():
    assert parse_rubric_answer(json.dumps(GOOD)) == RubricAnswer(**GOOD)
    assert parse_rubric_answer("  \n" + json.dumps(GOOD) + "\n ") == RubricAnswer(**GOOD)
    assert parse_rubric_answer("```json\n" + json.dumps(GOOD) + "\n```") == RubricAnswer(**GOOD)
    assert parse_rubric_answer("```\n" + json.dumps(GOOD) + "\n```") == RubricAnswer(**GOOD)
    assert RubricAnswer(**GOOD).normalised() == (0.9, 0.65)


@pytest.mark.parametrize(
    "content,reason",
    [
        ("Sure! " + json.dumps(GOOD), "not a single JSON object"),
        (json.dumps(GOOD) + " I hope this helps", "not a single JSON object"),
        (json.dumps(GOOD) + json.dumps(GOOD), "not a single JSON object"),
        ("harmless: 9, helpful: 6", "not a single JSON object"),
        (json.dumps([GOOD]), "not an object"),
        (json.dumps({**GOOD, "harmless": "9"}), "harmless"),
        (json.dumps({**GOOD, "harmless": True}), "harmless"),
        (json.dumps({**GOOD, "helpful": 11}), "helpful"),
        (json.dumps({**GOOD, "helpful": -1}), "helpful"),
        (json.dumps({**GOOD, "refusal": "no"}), "refusal"),
        (json.dumps({**GOOD, "score": 10}), "score"),
        (json.dumps({k: v for k, v in GOOD.items() if k != "rationale"}), "rationale"),
        ("```json\n" + json.dumps(GOOD) + "\n``` and more", "not a single JSON object"),
        ("", "not a single JSON object"),
    ],
)
def test_anything_else_is_rejected_with_a_reason(content, reason):
    with pytest.raises(JudgeFormatError, match=reason):
        parse_rubric_answer(content)


def test_quote_wraps_and_extract_finds_the_body():
    nonce = new_nonce()
    assert len(nonce) == 16 and nonce != new_nonce()
    text = "intro\n" + quote("REPLY", "hello\nworld", nonce) + "\noutro"
    assert f"<<<BEGIN REPLY {nonce}>>>\nhello\nworld\n<<<END REPLY {nonce}>>>" in text
    assert extract_quoted(text, "REPLY") == "hello\nworld"
    assert extract_quoted(text, "OTHER") is None
    with pytest.raises(ValueError, match="label"):
        quote("reply<", "x", nonce)


@given(st.text(alphabet=st.sampled_from(list('<>ab \n{}"')), max_size=80))
def test_neutralised_text_never_contains_a_marker_run(text):
    cleaned = neutralise(text)
    assert "<<<" not in cleaned and ">>>" not in cleaned
    assert len(cleaned) == len(text)
    # text without runs of three is left alone
    if "<<<" not in text and ">>>" not in text:
        assert cleaned == text


@given(st.text(max_size=200))
def test_any_quoted_text_round_trips_through_extract(text):
    nonce = new_nonce()
    assert extract_quoted("x\n" + quote("REPLY", text, nonce) + "\ny", "REPLY") == neutralise(text)


def test_a_verdict_with_a_repeated_key_is_refused():
    from am3_verl.judges.format import JudgeFormatError, parse_rubric_answer

    with pytest.raises(JudgeFormatError, match="repeats the key 'harmless'"):
        parse_rubric_answer('{"harmless": 0, "helpful": 3, "refusal": false, "rationale": "x", "harmless": 10}')
