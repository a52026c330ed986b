"""Fixtures for the dialogue environment tests: parquet and agent-loop YAML writers."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml


@pytest.fixture
def write_rl_parquet(tmp_path):
    def write(rows: list[dict], name: str = "rl.parquet") -> Path:
        path = tmp_path / name
        pq.write_table(pa.Table.from_pylist(rows), path)
        return path

    return write


@pytest.fixture
def agent_loop_yaml(tmp_path):
    def write(**loop_kwargs) -> Path:
        path = tmp_path / "agent_loops.yaml"
        entry = {"name": "am3_dialogue", "_target_": "am3_verl.env.agent_loop.DialogueAgentLoop", **loop_kwargs}
        path.write_text(yaml.safe_dump([entry]))
        return path

    return write
