"""The AM3 GRPO recipes compose against the installed verl ``ppo_trainer`` config and everything they name resolves.

Running ``main_ppo`` itself needs vLLM/SGLang rollout servers, which need CUDA; these checks are what a
CPU can prove: every key exists and validates (verl's own ``validate_config`` and config dataclasses),
and the agent loop, reward function, advantage estimator and trainer mode they name all import.
"""

from pathlib import Path

import hydra
import pytest
from omegaconf import OmegaConf
from verl.trainer.ppo.core_algos import get_adv_estimator_fn
from verl.trainer.ppo.reward import get_custom_reward_fn
from verl.trainer.ppo.utils import need_critic, need_reference_policy
from verl.utils.config import omega_conf_to_dataclass, validate_config
from verl.utils.import_utils import resolve_config_path

from am3_verl.advantage.config import resolve_am3_config
from recipe_overrides import RECIPES, REPO, compose, recipe_overrides

GRPO_RECIPES = sorted((RECIPES / "grpo").glob("*.sh"))


@pytest.fixture(scope="module")
def rl_data_dir(tmp_path_factory):
    from am3_verl.data.intersafe_v import main as intersafe_v
    from am3_verl.data.sample import SAMPLE_DIR

    out = tmp_path_factory.mktemp("rl")
    intersafe_v(["--input", str(SAMPLE_DIR / "intersafe_v.jsonl"), "--output_dir", str(out), "--val_size", "6", "--no_progress"])
    return out


@pytest.fixture
def vllm_lora_rank_check(monkeypatch):
    """Stand-in for the one vLLM call in ``validate_config`` (LoRA rank support): vLLM needs CUDA.

    verl's ``get_vllm_max_lora_rank`` lives in a module that imports vLLM at import time; this stub
    applies the same rule (the rank must fit one of vLLM's supported max LoRA ranks).
    """
    import sys
    import types

    supported = (1, 8, 16, 32, 64, 128, 256, 320, 512)
    seen = []

    def get_vllm_max_lora_rank(lora_rank: int) -> int:
        seen.append(lora_rank)
        fitting = [r for r in supported if r >= lora_rank]
        if not fitting:
            raise ValueError(f"LoRA rank {lora_rank} exceeds vLLM's largest supported rank {supported[-1]}")
        return fitting[0]

    stub = types.ModuleType("verl.workers.rollout.vllm_rollout.utils")
    stub.get_vllm_max_lora_rank = get_vllm_max_lora_rank
    monkeypatch.setitem(sys.modules, "verl.workers.rollout.vllm_rollout", types.ModuleType("verl.workers.rollout.vllm_rollout"))
    monkeypatch.setitem(sys.modules, "verl.workers.rollout.vllm_rollout.utils", stub)
    return seen


def composed(script, rl_data_dir, tiny_qwen_dir, tmp_path, *extra):
    if "llava_next" in script.name:  # LLaVA-NeXT recipes compose against the tiny LLaVA-NeXT
        tiny_qwen_dir = tiny_qwen_dir.parent / "llava_next"
    return compose("ppo_trainer", recipe_overrides(script, recipe_env(rl_data_dir, tiny_qwen_dir, tmp_path), *extra))


def recipe_env(rl_data_dir, model_dir, ckpt_dir, **judge):
    """What a user exports before launching a GRPO recipe (the judge at a placeholder endpoint by default)."""
    judge = judge or {"AM3_JUDGE_BACKEND": "openai", "AM3_JUDGE_BASE_URL": "http://judge-host:8000/v1", "AM3_JUDGE_MODEL": "judge"}
    return {"DATA_DIR": str(rl_data_dir), "MODEL_PATH": str(model_dir), "CKPT_DIR": str(ckpt_dir), **judge}


def test_there_are_grpo_recipes():
    assert {p.name for p in GRPO_RECIPES} >= {
        "am3_grpo_qwen2_5_vl_7b_8gpu.sh",
        "am3_grpo_qwen2_5_vl_7b_lora_1gpu.sh",
        "am3_grpo_tiny_cpu.sh",
    }


def test_the_tiny_cpu_recipe_is_the_8gpu_recipe_with_size_device_and_backend_overrides(rl_data_dir, tiny_qwen_dir, tmp_path):
    env = recipe_env(rl_data_dir, tiny_qwen_dir, tmp_path)
    full = recipe_overrides(RECIPES / "grpo" / "am3_grpo_qwen2_5_vl_7b_8gpu.sh", env)
    tiny = recipe_overrides(RECIPES / "grpo" / "am3_grpo_tiny_cpu.sh", env)
    key = lambda override: override.split("=", 1)[0].lstrip("+")  # noqa: E731
    # the method's settings are the 8-GPU recipe's, untouched
    assert {o for o in tiny if key(o).startswith("algorithm.")} == {o for o in full if key(o).startswith("algorithm.")}
    assert "actor_rollout_ref.rollout.name=hf" in tiny and "trainer.device=cpu" in tiny
    judge = {o for o in tiny if ".reward_kwargs." in o and key(o).rsplit(".", 1)[1] in ("backend", "base_url", "model")}
    assert judge == {"+reward.custom_reward_function.reward_kwargs.backend=openai",
                     "+reward.custom_reward_function.reward_kwargs.base_url=http://judge-host:8000/v1",
                     "+reward.custom_reward_function.reward_kwargs.model=judge"}  # fmt: skip


def test_the_tiny_cpu_recipe_with_vllm_adds_only_cpu_vllm_settings_and_the_head_dim_32_model(rl_data_dir, tmp_path, vllm_lora_rank_check):
    env = recipe_env(rl_data_dir, "unused", tmp_path)
    del env["MODEL_PATH"]  # the recipe's own default: the tiny model vLLM's CPU attention serves
    script = RECIPES / "grpo" / "am3_grpo_tiny_cpu.sh"
    hf = recipe_overrides(script, env)
    vllm = recipe_overrides(script, env, "actor_rollout_ref.rollout.name=vllm")
    added = set(vllm) - set(hf)
    assert {o.split("=", 1)[0] for o in added} == {
        "actor_rollout_ref.rollout.name",
        "actor_rollout_ref.model.path",
        "actor_rollout_ref.rollout.gpu_memory_utilization",
        "actor_rollout_ref.rollout.enforce_eager",
        "+actor_rollout_ref.rollout.enable_sleep_mode",
        "actor_rollout_ref.rollout.dtype",
        "actor_rollout_ref.rollout.checkpoint_engine.update_weights_bucket_megabytes",
    }
    assert f"actor_rollout_ref.model.path={REPO / '.venv' / 'am3-tiny-models' / 'qwen2_5_vl_h128'}" in vllm
    config = compose("ppo_trainer", vllm)
    OmegaConf.resolve(config)
    validate_config(config=config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config))
    assert config.actor_rollout_ref.rollout.name == "vllm" and config.actor_rollout_ref.rollout.enforce_eager


@pytest.mark.parametrize("script", GRPO_RECIPES, ids=lambda p: p.name)
def test_a_grpo_recipe_names_its_judge_explicitly_or_stops_before_launch(script, rl_data_dir, tiny_qwen_dir, tmp_path):
    import os
    import subprocess

    def run(**judge):
        env = {k: v for k, v in os.environ.items() if not k.startswith("AM3_JUDGE")}
        env.update(recipe_env(rl_data_dir, tiny_qwen_dir, tmp_path, **judge), AM3_PRINT_OVERRIDES="1")
        return subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True)

    missing = run(AM3_JUDGE_BACKEND="openai")  # no endpoint: an error naming the variable, nothing launched
    assert missing.returncode != 0 and "AM3_JUDGE_BASE_URL" in missing.stderr and not missing.stdout
    offline = run(AM3_JUDGE_BACKEND="heuristic")
    assert offline.returncode == 0 and "OFFLINE HEURISTIC" in offline.stderr
    assert "+reward.custom_reward_function.reward_kwargs.backend=heuristic" in offline.stdout.splitlines()


def test_the_tiny_cpu_recipe_wants_the_judge_backend_named(rl_data_dir, tiny_qwen_dir, tmp_path):
    import os
    import subprocess

    env = {k: v for k, v in os.environ.items() if k != "AM3_JUDGE_BACKEND"}
    env.update(DATA_DIR=str(rl_data_dir), MODEL_PATH=str(tiny_qwen_dir), AM3_PRINT_OVERRIDES="1")
    result = subprocess.run(["bash", str(RECIPES / "grpo" / "am3_grpo_tiny_cpu.sh")], env=env, capture_output=True, text=True)
    assert result.returncode != 0 and "AM3_JUDGE_BACKEND" in result.stderr


@pytest.mark.slow  # composes and validates every section of verl's config
@pytest.mark.parametrize("script", GRPO_RECIPES, ids=lambda p: p.name)
def test_grpo_recipe_composes_and_validates(script, rl_data_dir, tiny_qwen_dir, tmp_path, vllm_lora_rank_check):
    config = composed(script, rl_data_dir, tiny_qwen_dir, tmp_path)
    OmegaConf.resolve(config)
    validate_config(config=config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config))
    assert vllm_lora_rank_check == ([64] if "lora" in script.name else [])
    # (verl 0.9.1's RewardManagerConfig cannot be converted at all - its __post_init__ calls a missing
    # super().__post_init__ - and main_ppo never converts it; the reward function is checked below.)
    for section in (config.actor_rollout_ref.actor, config.actor_rollout_ref.rollout, config.actor_rollout_ref.model):
        omega_conf_to_dataclass(section)
    assert resolve_am3_config(config.algorithm).variant == "paper"
    # long runs: resume from CKPT_DIR (where checkpoints go), validation replies logged, trackers from AM3_LOGGER
    assert config.trainer.resume_mode == "auto" and config.trainer.default_local_dir == str(tmp_path)
    assert config.trainer.log_val_generations > 0
    assert "console" in config.trainer.logger


@pytest.mark.parametrize("script", GRPO_RECIPES, ids=lambda p: p.name)
def test_everything_a_grpo_recipe_names_resolves(script, rl_data_dir, tiny_qwen_dir, tmp_path):
    config = composed(script, rl_data_dir, tiny_qwen_dir, tmp_path)
    for key in ("train_files", "val_files"):
        assert (rl_data_dir / config.data[key].rsplit("/", 1)[-1]).is_file()
    # the agent-loop YAML exists and each entry's class imports
    loops = OmegaConf.load(resolve_config_path(config.actor_rollout_ref.rollout.agent.agent_loop_config_path))
    names = {entry.name for entry in loops}
    assert config.actor_rollout_ref.rollout.agent.default_agent_loop in names
    for entry in loops:
        hydra.utils.get_class(entry._target_)
    # the reward function loads through verl's own loader; the estimator and trainer mode are registered
    from am3_verl.judges.reward import compute_score

    reward_fn = get_custom_reward_fn(config)  # verl's partial over the file's function and the reward kwargs
    assert reward_fn.args[0] is compute_score
    assert get_adv_estimator_fn(config.algorithm.adv_estimator).__name__ == "compute_am3_grpo_advantage"
    from verl.trainer.ppo.v1 import PPOTrainerSync, get_trainer_cls

    from am3_verl.advantage.trainer_modes import TRAINER_MODES

    mode = config.trainer.v1.trainer_mode
    assert get_trainer_cls(mode) is {**TRAINER_MODES, "sync": PPOTrainerSync}[mode]


def test_a_typo_in_a_recipe_key_fails_composition(rl_data_dir, tiny_qwen_dir, tmp_path):
    script = RECIPES / "grpo" / "am3_grpo_qwen2_5_vl_7b_8gpu.sh"
    with pytest.raises(Exception, match="actor_rollout_ref.rollout.agent.agent_loop_confg_path"):
        composed(script, rl_data_dir, tiny_qwen_dir, tmp_path, "actor_rollout_ref.rollout.agent.agent_loop_confg_path=x")


def test_an_unknown_am3_setting_is_rejected(rl_data_dir, tiny_qwen_dir, tmp_path):
    script = RECIPES / "grpo" / "am3_grpo_qwen2_5_vl_7b_8gpu.sh"
    config = composed(script, rl_data_dir, tiny_qwen_dir, tmp_path, "+algorithm.am3.lamda=0.5")
    with pytest.raises(ValueError, match="lamda"):
        resolve_am3_config(config.algorithm)


@pytest.mark.parametrize("script", GRPO_RECIPES, ids=lambda p: p.name)
def test_a_grpo_recipe_takes_its_trackers_from_am3_logger(script, rl_data_dir, tiny_qwen_dir, tmp_path):
    import os
    import subprocess

    def run(**logger):
        env = {k: v for k, v in os.environ.items() if k != "AM3_LOGGER"}
        env.update(recipe_env(rl_data_dir, tiny_qwen_dir, tmp_path), AM3_PRINT_OVERRIDES="1", **logger)
        return subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True)

    default = run()
    expected = "trainer.logger=[console]" if "tiny_cpu" in script.name else "trainer.logger=[console,wandb]"
    assert default.returncode == 0 and [o for o in default.stdout.splitlines() if o.startswith("trainer.logger=")] == [expected]
    chosen = run(AM3_LOGGER="console,tensorboard,mlflow")
    assert [o for o in chosen.stdout.splitlines() if o.startswith("trainer.logger=")] == ["trainer.logger=[console,tensorboard,mlflow]"]
    assert "am3-verl: trainer.logger=[console,tensorboard,mlflow] (from AM3_LOGGER)\n" in chosen.stderr
    if "tiny_cpu" not in script.name:  # the tiny recipe sets AM3_LOGGER=console itself when it is unset
        assert "am3-verl: trainer.logger=[console,wandb] (the recipe default; set AM3_LOGGER to change it)" in default.stderr
    typo = run(AM3_LOGGER="console,tensorbord")
    assert typo.returncode != 0 and "tensorbord" in typo.stderr and not typo.stdout


@pytest.mark.parametrize("name", ["am3_grpo_tiny_cpu.sh", "am3_grpo_qwen2_5_vl_7b_8gpu.sh"])
def test_a_recipe_found_as_package_data_names_the_checkouts_files(name, rl_data_dir, tiny_qwen_dir, tmp_path):
    """The stages (demo, miniature) launch recipes through ``am3_verl.packaged``: every file a recipe names must exist."""
    from am3_verl.packaged import recipe

    overrides = recipe_overrides(recipe("grpo", name), recipe_env(rl_data_dir, tiny_qwen_dir, tmp_path))
    named = {key: value for key, _, value in (o.partition("=") for o in overrides)}
    for key in ("reward.custom_reward_function.path", "actor_rollout_ref.rollout.agent.agent_loop_config_path"):
        assert Path(named[key].strip("'\"")).is_file(), f"{key}={named[key]}"
