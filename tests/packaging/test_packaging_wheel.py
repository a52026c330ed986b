"""The built wheel works without the checkout: packaged recipes and resources, the plugin, the rollout harness.

The wheel is built from this checkout (``pip wheel --no-deps --no-build-isolation``) and installed, not
editable, into a fresh virtual environment that sees the dependencies (verl, torch) of the running one
through a path entry only: the running environment's own ``.pth`` files, such as an editable am3-verl,
are not processed there. The harness then runs from an unrelated working folder.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]

HARNESS = r"""
import asyncio, json, sys
from pathlib import Path

import am3_verl
import am3_verl.plugin as plugin
import verl  # noqa: F401  (loads the plugin through its entry point)
from am3_verl.local.generation import load_local_client
from am3_verl.local.rollout import AGENT_LOOP_CONFIG, compose_ppo_config, generate, load_rl_dataset, make_agent_loop_worker, rollout_batch
from am3_verl.packaged import recipe

plugin.assert_loaded()
model, data = sys.argv[1], sys.argv[2]
loops = recipe("agent_loops", "am3_dialogue_tiny.yaml")
config = compose_ppo_config(model, prompt_length=1024, response_length=512, agent_loop_config_path=loops)
worker = make_agent_loop_worker(config, load_local_client(model, seed=0))
output = asyncio.run(generate(worker, rollout_batch(load_rl_dataset([data], config), [0], n=2)))
print(json.dumps({
    "package": am3_verl.__file__, "agent_loop_config": str(AGENT_LOOP_CONFIG), "loops": str(loops),
    "rows": len(output), "turns": [len(t) for t in output.non_tensor_batch["am3_turns"]],
}))
"""


def _site_packages(env_dir: Path) -> Path:
    paths = sysconfig.get_paths(vars={"base": str(env_dir), "platbase": str(env_dir)})
    return Path(paths["purelib"])


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    # Built from a clean copy: setuptools builds in-tree and never prunes a stale build/ folder.
    source = tmp_path_factory.mktemp("source") / "am3-verl"
    junk = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "outputs", "__pycache__", ".*_cache", ".hypothesis")
    shutil.copytree(REPO, source, symlinks=True, ignore=junk)
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", str(out), str(source)],
        check=True,
        timeout=600,
    )
    (built,) = out.glob("am3_verl-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    env_dir = tmp_path_factory.mktemp("env")
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    site = _site_packages(env_dir)
    # The running environment's packages as a plain path entry (its .pth files are not processed).
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q", str(wheel)],
        check=True,
        timeout=600,
    )
    return python


def test_the_wheel_ships_the_recipes_and_resources(wheel):
    import zipfile

    names = set(zipfile.ZipFile(wheel).namelist())
    for name in (
        "am3_verl/recipes/agent_loops/am3_dialogue.yaml",
        "am3_verl/recipes/grpo/am3_grpo_tiny_cpu.sh",
        "am3_verl/resources/sample/intersafe_v.jsonl",
        "am3_verl/plugin.py",
    ):
        assert name in names, name
    assert not any(name.startswith("tests/") for name in names)


def test_the_rollout_harness_runs_from_the_installed_wheel(installed, tiny_qwen_dir, tmp_path):
    from am3_verl.data.intersafe_v import main as convert
    from am3_verl.data.sample import SAMPLE_DIR

    data = tmp_path / "data"
    convert(["--input", str(SAMPLE_DIR / "intersafe_v.jsonl"), "--output_dir", str(data), "--val_size", "6", "--no_progress"])
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    result = subprocess.run(
        [str(installed), "-c", HARNESS, str(tiny_qwen_dir), str(data / "rl_val.parquet")],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    site = str(_site_packages(installed.parent.parent))
    for key in ("package", "agent_loop_config", "loops"):
        assert report[key].startswith(site), (key, report[key])
    assert report["rows"] == 2 and all(turns >= 1 for turns in report["turns"])
