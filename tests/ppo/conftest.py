import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def rl_data_dir(tmp_path_factory):
    """The bundled InterSafe-V sample as verl RL parquet (16 train / 8 validation dialogues)."""
    from am3_verl.data.intersafe_v import main as intersafe_v
    from am3_verl.data.sample import SAMPLE_DIR

    out = tmp_path_factory.mktemp("ppo-data")
    intersafe_v(["--input", str(SAMPLE_DIR / "intersafe_v.jsonl"), "--output_dir", str(out), "--val_size", "8", "--no_progress"])
    return out


@pytest.fixture(scope="session")
def loopback_judge():
    """A real OpenAI-compatible judge on 127.0.0.1 whose scores spread over the range (see SpreadJudgeResponder)."""
    from am3_verl.testing.openai_server import LoopbackOpenAIServer
    from ppo_helpers import SpreadJudgeResponder

    with LoopbackOpenAIServer(responder=SpreadJudgeResponder(), model="loopback-judge") as server:
        yield server


@pytest.fixture(scope="session")
def judge_env(loopback_judge):
    """Environment that points the recipes' `openai` judge backend at the loopback judge."""
    return {"AM3_JUDGE_BACKEND": "openai", "AM3_JUDGE_BASE_URL": loopback_judge.base_url, "AM3_JUDGE_MODEL": loopback_judge.model}
