"""The cold-start SFT recipes compose against the installed verl.

That the Qwen2.5-VL recipe runs on the CPU and its checkpoint learns is proven end to end by
``tests/miniature/test_miniature_learns.py`` (``am3_verl.stages.cold_start_sft`` runs this recipe).
"""

from pathlib import Path

import pytest
from omegaconf import OmegaConf
from verl.utils.config import omega_conf_to_dataclass

from recipe_overrides import RECIPES, compose, recipe_overrides

SFT_RECIPES = sorted((RECIPES / "sft").glob("*.sh"))


@pytest.fixture(scope="module")
def cold_start_dir(tmp_path_factory):
    from am3_verl.data.cold_start import main as cold_start
    from am3_verl.data.sample import SAMPLE_DIR

    out = tmp_path_factory.mktemp("cold_start")
    cold_start(
        ["--refusal", str(SAMPLE_DIR / "refusal_vqa.jsonl"), "--general", str(SAMPLE_DIR / "general.jsonl"),
         "--general_ratio", "0.5", "--output_dir", str(out), "--no_progress"]
    )  # fmt: skip
    return out


def test_there_are_sft_recipes():
    assert {p.name for p in SFT_RECIPES} >= {"cold_start_qwen2_5_vl_7b_8gpu.sh", "cold_start_qwen2_5_vl_7b_lora_1gpu.sh"}


@pytest.mark.slow  # composes and validates verl's SFT config
@pytest.mark.parametrize("script", SFT_RECIPES, ids=lambda p: p.name)
def test_sft_recipe_composes_and_validates(script, cold_start_dir, tiny_models_dir, tmp_path):
    tiny_qwen_dir = tiny_models_dir / ("llava_next" if "llava_next" in script.name else "qwen2_5_vl")  # the recipe's family
    env = {"DATA_DIR": str(cold_start_dir), "MODEL_PATH": str(tiny_qwen_dir), "CKPT_DIR": str(tmp_path)}
    overrides = recipe_overrides(script, env)
    config = compose("sft_trainer_engine", overrides)
    OmegaConf.resolve(config)
    # Every section converts to verl's config dataclasses (their __post_init__ checks run).
    model = omega_conf_to_dataclass(config.model)
    omega_conf_to_dataclass(config.engine)
    omega_conf_to_dataclass(config.optim)
    omega_conf_to_dataclass(config.checkpoint)
    assert model.path == str(tiny_qwen_dir)
    assert Path(config.data.train_files).is_file()  # the data preparation output the recipe reads
    assert config.engine.strategy == "fsdp2"


def test_callers_override_recipe_values_without_duplicates(tmp_path):
    script = RECIPES / "sft" / "cold_start_qwen2_5_vl_7b_8gpu.sh"
    overrides = recipe_overrides(script, {"DATA_DIR": str(tmp_path)}, "trainer.total_epochs=7", "+model.override_config.x=1")
    keys = [o.split("=", 1)[0].lstrip("+") for o in overrides]
    assert len(keys) == len(set(keys))
    assert "trainer.total_epochs=7" in overrides and "trainer.total_epochs=2" not in overrides
