"""Fixtures for the builder tests: a loopback chat server playing every role and a loopback images server.

Both are real HTTP servers on 127.0.0.1 (no mocks); their answers are scripted and deterministic."""

from __future__ import annotations

import pytest

from am3_verl.testing.builder_loopback import LoopbackImagesServer, ScriptedBuilderModels
from am3_verl.testing.openai_server import LoopbackOpenAIServer


@pytest.fixture
def chat_server():
    """The scripted roles (decomposer, scorer, attacker, judge, writer, victims) on one chat server."""
    with LoopbackOpenAIServer(ScriptedBuilderModels(), record_last=100_000) as server:
        yield server


@pytest.fixture
def images_server():
    """An OpenAI-images-compatible server drawing seeded mosaics."""
    with LoopbackImagesServer() as server:
        yield server
