"""The ``algorithm.am3`` override keys, composed against verl's own ``ppo_trainer`` hydra config."""

from __future__ import annotations

import os

import pytest
import torch
import verl
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from verl.trainer.config import AlgoConfig

from adv_reference import reference_am3
from adv_rows import synthetic_batch
from am3_verl.advantage import compute_am3_grpo_advantage
from am3_verl.advantage.config import Am3AdvantageConfig, resolve_am3_config

CONFIG_DIR = os.path.join(os.path.dirname(verl.__file__), "trainer", "config")

OVERRIDES = [
    "algorithm.adv_estimator=am3_grpo",
    "+algorithm.am3.tau=0.7",
    "+algorithm.am3.lambda_=2.5",
    "+algorithm.am3.beta=0.5",
    "+algorithm.am3.temperature=0.25",
    "+algorithm.am3.variant=paper",
    "algorithm.norm_adv_by_std_in_grpo=false",
]


def compose_ppo(overrides: list[str]):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        return compose(config_name="ppo_trainer", overrides=overrides)


def test_overrides_compose_with_main_ppo_config_and_reach_the_estimator():
    config = compose_ppo(OVERRIDES)
    cfg = resolve_am3_config(config.algorithm)
    assert cfg == Am3AdvantageConfig(tau=0.7, lambda_=2.5, beta=0.5, temperature=0.25, variant="paper")
    batch = synthetic_batch(21, group_sizes=[6, 6])
    advantages, _ = compute_am3_grpo_advantage(batch.token_level_rewards, batch.response_mask, batch.index, config=config.algorithm)
    ref = reference_am3(
        batch.token_level_rewards.tolist(),
        batch.response_mask.tolist(),
        list(batch.index),
        tau=0.7,
        lambda_=2.5,
        beta=0.5,
        temperature=0.25,
        norm_by_std=False,
    )
    torch.testing.assert_close(advantages, torch.tensor(ref.advantages, dtype=torch.float32), rtol=1e-4, atol=1e-4)
    defaults, _ = compute_am3_grpo_advantage(batch.token_level_rewards, batch.response_mask, batch.index)
    assert not torch.allclose(advantages, defaults)


def test_defaults_without_an_am3_section():
    config = compose_ppo(["algorithm.adv_estimator=am3_grpo"])
    assert resolve_am3_config(config.algorithm) == Am3AdvantageConfig()
    assert Am3AdvantageConfig() == Am3AdvantageConfig(tau=0.5, lambda_=1.0, beta=1.0, temperature=1.0, variant="paper")
    assert resolve_am3_config(AlgoConfig()) == Am3AdvantageConfig()
    assert resolve_am3_config(None) == Am3AdvantageConfig()


@pytest.mark.parametrize(
    "section, message",
    [
        ({"lambda": 1.0}, "unknown key.*lambda.*write lambda_"),
        ({"tua": 0.5}, "unknown key.*tua"),
        ({"tau": 1.5}, r"tau=1\.5 must be in \[0, 1\]"),
        ({"temperature": 0}, "temperature=0.0 must be a finite number > 0"),
        ({"lambda_": -1}, "lambda_=-1.0 must be"),
        ({"variant": "gdpo"}, "variant='gdpo' must be one of paper, uniform, min_mean, decoupled, turn_credit"),
        ({"beta": "high"}, "algorithm.am3.beta='high' is not a number"),
        ({"discount": 2}, "discount=2.0 must be in"),
    ],
)
def test_bad_settings_are_rejected_naming_the_key(section, message):
    with pytest.raises(ValueError, match=message):
        resolve_am3_config(OmegaConf.create({"am3": section}))


def test_bad_settings_fail_through_hydra_and_the_estimator():
    config = compose_ppo(["+algorithm.am3.lambda=2.0"])
    batch = synthetic_batch(1, group_sizes=[2])
    with pytest.raises(ValueError, match="algorithm.am3: unknown key"):
        compute_am3_grpo_advantage(batch.token_level_rewards, batch.response_mask, batch.index, config=config.algorithm)
    with pytest.raises(ValueError, match="algorithm.am3 must be a mapping"):
        resolve_am3_config(OmegaConf.create({"am3": 3}))


def test_kl_in_reward_is_rejected_from_the_composed_config():
    config = compose_ppo(OVERRIDES + ["algorithm.use_kl_in_reward=true"])
    batch = synthetic_batch(1, group_sizes=[2])
    with pytest.raises(ValueError, match="use_kl_in_reward=False"):
        compute_am3_grpo_advantage(batch.token_level_rewards, batch.response_mask, batch.index, config=config.algorithm)


def test_the_documented_settings_are_the_config_fields():
    """docs/advantage.md holds the one reference table of ``algorithm.am3``; it lists every field, no more."""
    import dataclasses
    import re
    from pathlib import Path

    docs = (Path(__file__).resolve().parents[2] / "docs" / "advantage.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"^\| `\+algorithm\.am3\.(\w+)`", docs, flags=re.MULTILINE))
    fields = {f.name for f in dataclasses.fields(Am3AdvantageConfig) if not f.name.startswith("_")}
    assert documented == fields
