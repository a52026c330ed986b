"""Hostile records never stop a conversion: each becomes a named reject row (position, id, field, reason)
and the run goes on, in all three converters, with read = written + rejected.

The cases: a NUL byte in an image path, a lone UTF-16 surrogate (JSON ``"\\ud800"``) in text, JSON nested
deeper than Python's parser allows, a symlink loop under ``--image_root``, and a duplicate JSON key.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from am3_verl.data import intersafe_v, readers, safemt
from am3_verl.data.errors import DataPrepError

from data_helpers import CONVERTERS, ConverterCase, png_bytes, read_rejects

DEEP = 100_000


def _deep_record(case: ConverterCase) -> str:
    """A record line whose extra value is ``DEEP`` nested lists (json.loads raises RecursionError on it)."""
    text = json.dumps(case.record("bad"))
    return text[:-1] + ', "extra": ' + "[" * DEEP + "]" * DEEP + "}"


def _duplicate_key_record(case: ConverterCase) -> str:
    """A record line with ``case.dup_key`` twice (json.loads would silently keep the second)."""
    record = case.record("bad")
    return json.dumps(record)[:-1] + f", {json.dumps(case.dup_key)}: {json.dumps(record[case.dup_key])}" + "}"


def _bad_line(case: ConverterCase, kind: str, folder: Path) -> tuple[str, str, str | None, str]:
    """``(JSONL line, expected reject field, expected reject id, a word the reason must hold)`` for ``kind``."""
    if kind == "nul_in_image_path":
        return json.dumps(case.record("bad", image="img\u0000.png")), case.image_field, "bad", "NUL"
    if kind == "lone_surrogate_in_text":
        return json.dumps(case.record("bad", text="half a pair: \ud800")), case.text_field, "bad", "surrogate"
    if kind == "deeply_nested_json":
        return _deep_record(case), "<record>", None, "nested"
    if kind == "symlink_loop_under_image_root":
        os.symlink(folder / "loop-b.png", folder / "loop-a.png")
        os.symlink(folder / "loop-a.png", folder / "loop-b.png")
        return json.dumps(case.record("bad", image="loop-a.png")), case.image_field, "bad", "symlink"
    if kind == "duplicate_key":
        return _duplicate_key_record(case), case.dup_key, "bad", "more than once"
    raise AssertionError(kind)


@pytest.mark.parametrize("converter", sorted(CONVERTERS))
@pytest.mark.parametrize(
    "kind", ["nul_in_image_path", "lone_surrogate_in_text", "deeply_nested_json", "symlink_loop_under_image_root", "duplicate_key"]
)
def test_a_hostile_record_is_a_named_reject_and_the_run_goes_on(tmp_path, converter, kind):
    case = CONVERTERS[converter]
    (tmp_path / "img.png").write_bytes(png_bytes())
    line, field, record_id, word = _bad_line(case, kind, tmp_path)
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps(case.record("good")) + "\n" + line + "\n", encoding="utf-8")
    out = tmp_path / "out"
    counts = case.run(source, out, "--image_root", str(tmp_path))
    assert counts.read == 2 and counts.rejected == 1 and sum(counts.written.values()) == 1
    assert counts.read == sum(counts.written.values()) + counts.rejected
    (reject,) = read_rejects(out / "rejects.jsonl")
    assert (reject["position"], reject["id"], reject["field"]) == (1, record_id, field), reject
    assert word.lower() in reject["reason"].lower(), reject
    assert pq.read_metadata(out / case.output).num_rows == 1


def test_a_deeply_nested_item_in_a_safemt_json_array_is_a_reject(tmp_path):
    case = CONVERTERS["safemt"]
    (tmp_path / "img.png").write_bytes(png_bytes())
    items = [json.dumps(case.record("first")), _deep_record(case), json.dumps(case.record("last"))]
    source = tmp_path / "safemt.json"
    source.write_text("[\n" + ",\n".join(items) + "\n]\n", encoding="utf-8")
    summary = safemt.main(["--input", str(source), "--output_dir", str(tmp_path / "out"), "--workers", "1", "--no_progress"])
    assert (summary.counts.read, summary.counts.written, summary.counts.rejected) == (3, {"eval": 2}, 1)
    (reject,) = read_rejects(tmp_path / "out" / "rejects.jsonl")
    assert (reject["position"], reject["field"]) == (1, "<record>") and "nested" in reject["reason"]
    ids = pq.read_table(tmp_path / "out" / "safemt.parquet", columns=["id"]).column("id").to_pylist()
    assert ids == ["first", "last"]


def test_a_surrogate_in_an_id_still_gives_a_readable_reject_row(tmp_path):
    case = CONVERTERS["intersafe_v"]
    (tmp_path / "img.png").write_bytes(png_bytes())
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps(case.record("good")) + "\n" + json.dumps(case.record("bad\udc80")) + "\n", encoding="utf-8")
    counts = case.run(source, tmp_path / "out")
    assert counts.rejected == 1
    raw = (tmp_path / "out" / "rejects.jsonl").read_bytes()
    raw.decode("utf-8")  # strict: the file is valid UTF-8
    (reject,) = read_rejects(tmp_path / "out" / "rejects.jsonl")
    assert reject["field"] == "id" and reject["id"] == "bad\\udc80"


def test_nested_duplicate_keys_name_their_path(tmp_path):
    case = CONVERTERS["intersafe_v"]
    (tmp_path / "img.png").write_bytes(png_bytes())
    line = '{"id": "bad", "category": "violence", "turns": [{"user": "hi", "user": "<image> x", "images": ["img.png"]}]}'
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps(case.record("good")) + "\n" + line + "\n", encoding="utf-8")
    case.run(source, tmp_path / "out")
    (reject,) = read_rejects(tmp_path / "out" / "rejects.jsonl")
    assert reject["field"] == "turns[0].user" and "more than once" in reject["reason"]


@pytest.mark.parametrize("payload", ['{"a": 1, "a": 2}', "[" * DEEP + "]" * DEEP])
def test_parse_payload_refuses_what_json_loads_would_mangle_or_crash_on(payload):
    with pytest.raises(ValueError):
        readers.parse_payload(payload)


@pytest.mark.parametrize("categories", [",", "", " , ", "violence,,fraud", "violence, "])
def test_an_empty_category_list_or_name_is_refused(tmp_path, categories):
    case = CONVERTERS["intersafe_v"]
    (tmp_path / "img.png").write_bytes(png_bytes())
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps(case.record("good")) + "\n", encoding="utf-8")
    with pytest.raises(DataPrepError, match="--categories"):
        case.run(source, tmp_path / "out", "--categories", categories)
    assert not (tmp_path / "out" / "rl_train.parquet").exists()
    with pytest.raises(DataPrepError, match="categories"):
        intersafe_v.convert_intersafe_v(source, tmp_path / "out", val_size=0, workers=1, progress=False, allowed_categories=())


@pytest.mark.parametrize(
    "text, elements",
    [("[]", []), (" [ ] \n", []), ('[1, {"a": [2, "]"]}, null]', ["1", '{"a": [2, "]"]}', "null"]), ("\n[\n  7\n]\n", ["7"])],
)
def test_json_array_elements_cuts_an_array_into_element_texts(text, elements):
    assert list(readers.json_array_elements(text)) == elements


def test_an_element_too_deep_to_parse_is_cut_out_by_its_brackets():
    deep = "[" * DEEP + '"]["' + "]" * DEEP
    assert list(readers.json_array_elements(f'[1, {deep}, {{"b": "}}"}}]')) == ["1", deep, '{"b": "}"}']


@pytest.mark.parametrize("text", ["[1,]", "[1 2]", "[1] 2", "{}", "[1, " + "[" * DEEP])
def test_a_malformed_array_is_an_error(text):
    with pytest.raises(ValueError):
        list(readers.json_array_elements(text))
