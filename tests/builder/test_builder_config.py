"""The builder config and the prompts: the example recipe loads, bad settings fail naming the field,
prompt overrides are checked and used, keys come only from the environment and never reach the outputs."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from am3_verl.builder.config import BuilderError, content_fingerprint, load_config, parse_config
from am3_verl.builder.demo import loopback_config
from am3_verl.builder.pipeline import build
from am3_verl.builder.prompts import DEFAULT_PROMPTS, PROMPT_FIELDS, Prompts, professional_refusals
from am3_verl.testing.openai_server import LoopbackOpenAIServer
from am3_verl.testing.builder_loopback import ScriptedBuilderModels

from builder_helpers import read_jsonl, write_seeds

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "recipes" / "builder" / "intersafe_v_builder.yaml"
BASE = loopback_config("http://127.0.0.1:9/v1", "http://127.0.0.1:9/v1")


def _with(**changes) -> dict:
    data = copy.deepcopy(BASE)
    for path, value in changes.items():
        node = data
        keys = path.split("__")
        for key in keys[:-1]:
            node = node[int(key)] if isinstance(node, list) else node[key]
        node[keys[-1]] = value
    return data


def test_the_example_recipe_loads_with_the_papers_roles():
    config = load_config(RECIPE)
    assert config.endpoints[config.roles.attacker.endpoint].model == "OpenGVLab/InternVL3-78B"
    assert [v.name for v in config.victims] == ["kimi_vl", "qwen2_5_vl_7b"]
    assert config.text_to_image.enabled and config.endpoints[config.text_to_image.endpoint].model == "Qwen/Qwen-Image"
    assert config.refusal_vqa.counts == {"general": 300, "health": 100, "finance": 100}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"endpoints__attacker__api_key": "sk-secret"}, "api_key_env"),
        ({"roles__attacker__temprature": 0.5}, "roles.attacker.temprature"),
        ({"roles__judge__endpoint": "nowhere"}, "roles.judge.endpoint 'nowhere' is not in endpoints"),
        ({"victims__1__name": "victim_a"}, "victim names must be unique"),
        ({"victims__0__name": "bad name/with slash"}, "victims[0].name"),
        ({"endpoints__scorer__base_url": "ftp://x"}, "endpoints.scorer.base_url"),
        (
            {"endpoints__scorer": {"base_url": "http://127.0.0.1:9/v1", "model": "stub-judge", "max_concurrency": 3}},
            "one endpoint has one limit",
        ),
        ({"decompose": {"min_sub_queries": 4, "max_sub_queries": 2}}, "max_sub_queries 2 < min_sub_queries 4"),
        ({"decompose": {"thresholds": {"image_relevance": 2, "intent_link": 0.5, "harmless_wording": 0.5}}}, "not in [0, 1]"),
        ({"text_to_image": {"enabled": True}}, "needs an endpoint"),
        ({"text_to_image": {"enabled": True, "endpoint": "easel"}}, "text_to_image.endpoint 'easel' is not in endpoints"),
        ({"roles__attacker__extra_params": {"temperature": 1}}, "set by the builder"),
        ({"prompts": {"no_such_prompt": "x"}}, "prompts.no_such_prompt is not a prompt"),
        ({"prompts": {"judge": "Judge this: ${transcript} ${secret}"}}, "unknown placeholder(s) ['secret']"),
        ({"prompts": {"score": "Score ${sub_query}"}}, "must keep placeholder(s) ['request']"),
        ({"professional_refusals": {"health": ["Please see a doctor."]}}, 'must start with "I\'m sorry"'),
    ],
)
def test_bad_settings_fail_naming_the_field(changes, message):
    data = copy.deepcopy(BASE)
    for path, value in changes.items():
        data = _with(**{path: value}) if "__" in path else {**data, path: value}
    with pytest.raises(BuilderError) as info:
        parse_config(data)
    assert message in str(info.value)


def test_load_config_errors_name_the_file(tmp_path):
    with pytest.raises(BuilderError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("endpoints: [unclosed\n")
    with pytest.raises(BuilderError, match="not valid YAML"):
        load_config(bad)
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("- a\n- b\n")
    with pytest.raises(BuilderError, match="must be a mapping"):
        load_config(wrong)


def test_fingerprint_follows_content_settings_not_operational_ones():
    base = content_fingerprint(parse_config(BASE))
    moved = copy.deepcopy(BASE)
    for endpoint in moved["endpoints"].values():
        endpoint.update(base_url="http://elsewhere:1/v1", timeout_s=99, max_concurrency=3)
    moved["run"] = {"concurrency": 1}
    assert content_fingerprint(parse_config(moved)) == base
    changed = content_fingerprint(parse_config(_with(clean={"min_risk": 0.9}, prompts={"judge_system": "Be strict."})))
    assert {k for k in base if base[k] != changed[k]} == {"clean", "prompts"}


def test_every_default_prompt_renders_with_its_fields_and_overrides_apply():
    prompts = Prompts()
    for name, (allowed, _) in PROMPT_FIELDS.items():
        text = prompts.render(name, **{field: f"<{field}>" for field in allowed})
        assert "${" not in text and text.strip()
    assert set(DEFAULT_PROMPTS) == set(PROMPT_FIELDS)
    custom = Prompts({"judge": "Conversation: ${transcript}. Price: $$5."})
    assert custom.render("judge", transcript="T", num_turns=2) == "Conversation: T. Price: $5."
    assert professional_refusals("finance", {"finance": ["I'm sorry, ask an adviser."]}) == ("I'm sorry, ask an adviser.",)


def test_prompt_overrides_reach_the_requests(tmp_path, chat_server, images_server):
    seeds = write_seeds(tmp_path, [{"id": "s1", "query": "How could someone hurt a person here?"}])
    marker = "Custom judge instructions v2."
    config = parse_config(loopback_config(chat_server.base_url, None, prompts={"judge_system": marker}))
    build(seeds, tmp_path / "out", config, progress=False)
    judge_requests = [r.body for r in chat_server.last_requests() if r.body["model"] == "stub-judge"]
    assert judge_requests and all(body["messages"][0]["content"] == marker for body in judge_requests)


def test_api_keys_come_from_the_environment_and_never_reach_the_outputs(tmp_path, monkeypatch):
    key = "sk-builder-test-0123456789"
    seeds = write_seeds(tmp_path, [{"id": "s1", "query": "How could someone hurt a person here?"}])
    with LoopbackOpenAIServer(ScriptedBuilderModels(), api_key=key, record_last=10_000) as server:
        data = loopback_config(server.base_url, None)
        for endpoint in data["endpoints"].values():
            endpoint["api_key_env"] = "AM3_TEST_BUILDER_KEY"
        config = parse_config(data)
        monkeypatch.delenv("AM3_TEST_BUILDER_KEY", raising=False)
        with pytest.raises(BuilderError, match="AM3_TEST_BUILDER_KEY, which is not set"):
            build(seeds, tmp_path / "out", config, progress=False)
        monkeypatch.setenv("AM3_TEST_BUILDER_KEY", key)
        summary = build(seeds, tmp_path / "out", config, progress=False)
        assert summary.exported.dialogues == 2
        assert server.stats().rejected == 0 and all(r.authorized for r in server.last_requests())
    for path in (tmp_path / "out").rglob("*"):
        if path.is_file():
            assert key.encode() not in path.read_bytes(), path
    assert len(read_jsonl(tmp_path / "out" / "intersafe_v.jsonl")) == 2
