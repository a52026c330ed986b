"""Fixtures for the evaluation tests: converted sample data, the SafeMT-format fixture, loopback servers, Chromium."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from am3_verl.data.cold_start import convert_cold_start
from am3_verl.data.intersafe_v import convert_intersafe_v
from am3_verl.data.safemt import convert_safemt
from am3_verl.data.sample import SAMPLE_DIR
from am3_verl.testing.openai_server import LoopbackOpenAIServer
from eval_helpers import EvalJudge, ScriptedModel, write_safemt_fixture

HERE = Path(__file__).resolve().parent
CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="session")
def sample_data(tmp_path_factory) -> dict[str, Path]:
    """The bundled sample converted by data preparation: InterSafe-V validation split (10 dialogues,
    benign ones included), the SafeMT sample and the held-out refusal VQA samples."""
    root = tmp_path_factory.mktemp("eval-sample")
    convert_intersafe_v(SAMPLE_DIR / "intersafe_v.jsonl", root / "isv", val_size=10, workers=1, progress=False)
    convert_safemt(SAMPLE_DIR / "safemt.json", root / "safemt", workers=1, progress=False)
    convert_cold_start(
        SAMPLE_DIR / "refusal_vqa.jsonl", root / "refusal", general_path=SAMPLE_DIR / "general.jsonl", val_size=4, workers=1, progress=False
    )
    return {
        "intersafe_val": root / "isv" / "rl_val.parquet",
        "safemt": root / "safemt" / "safemt.parquet",
        "refusal": root / "refusal" / "refusal_eval.parquet",
    }


@pytest.fixture(scope="session")
def safemt_fixture(tmp_path_factory) -> list[Path]:
    """A SafeMT-format fixture (3 ids at rounds 1, 2, 4, 6, 8) converted to one parquet per round file."""
    root = tmp_path_factory.mktemp("eval-safemt")
    parquets = []
    for json_file in write_safemt_fixture(root / "raw"):
        out = root / json_file.stem
        convert_safemt(json_file, out, workers=1, progress=False)
        parquets.append(out / "safemt.parquet")
    return parquets


@pytest.fixture
def model_server():
    """A loopback OpenAI server playing the model under test (role ``m``; set ``.responder`` attributes via set_responder)."""
    with LoopbackOpenAIServer(responder=ScriptedModel(role="m"), model="policy-under-test") as server:
        yield server


@pytest.fixture
def judge_server():
    """A loopback OpenAI server playing the rubric and pairwise judge."""
    with LoopbackOpenAIServer(responder=EvalJudge(), model="rule-judge") as server:
        yield server


@pytest.fixture(scope="session")
def chromium() -> Path:
    """Debian's Chromium, installed by ensure_chromium.sh when missing."""
    subprocess.run(["bash", str(HERE / "ensure_chromium.sh")], check=True, timeout=900)
    assert CHROMIUM.exists() and shutil.which(str(CHROMIUM))
    return CHROMIUM
