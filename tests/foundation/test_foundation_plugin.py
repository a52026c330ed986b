"""verl swallows plugin import errors, so prove in fresh interpreters that `import verl` loads ours."""

import os
import subprocess
import sys

import pytest

PROBE = (
    "import verl\n"
    "from verl.plugin.platform import PlatformRegistry\n"
    "from verl.trainer.ppo.core_algos import ADV_ESTIMATOR_REGISTRY\n"
    "from verl.experimental.agent_loop.agent_loop import _agent_loop_registry\n"
    "print('cpu' in PlatformRegistry.registered_names() and 'am3_grpo' in ADV_ESTIMATOR_REGISTRY"
    " and 'am3_dialogue' in _agent_loop_registry)\n"
)


pytestmark = pytest.mark.slow  # each case starts a fresh interpreter that imports verl


def _run(code: str, **env_overrides: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VERL_")}
    env.update(env_overrides)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip().splitlines()[-1]


def test_import_verl_loads_the_am3_plugin():
    assert _run(PROBE) == "True"


def test_registration_comes_from_the_entry_point():
    # With discovery disabled nothing registers the platform: the entry point is what loads us.
    assert _run(PROBE, VERL_USE_EXTERNAL_PLUGINS="none") == "False"


def test_entry_point_is_declared():
    code = "from importlib.metadata import entry_points\nprint(sorted(ep.value for ep in entry_points(group='verl.plugins')))\n"
    assert "am3_verl.plugin" in _run(code)


def test_assert_loaded_reports_a_missing_registration():
    code = (
        "from verl.plugin.platform import PlatformRegistry\n"
        "import am3_verl.plugin as p\n"
        "PlatformRegistry._platforms.pop('cpu')\n"
        "try:\n    p.assert_loaded()\nexcept RuntimeError as e:\n    print('raised:' + str(e)[:40])\n"
    )
    assert _run(code).startswith("raised:am3-verl plugin not loaded")
