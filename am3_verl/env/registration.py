"""Registers ``am3_dialogue`` in verl's agent-loop registry (called by the verl plugin).

Registration is by target path, without importing the loop, and only when the name is free: an
agent-loop YAML (``actor_rollout_ref.rollout.agent.agent_loop_config_path``) that configures
``am3_dialogue`` with constructor keys is loaded later by verl's ``AgentLoopWorker`` and must win.
(For the same reason the loop class carries no ``@register`` decorator: importing the module during
the first instantiation would overwrite the YAML's entry with a bare one.)
"""

from __future__ import annotations

AGENT_NAME = "am3_dialogue"
TARGET = "am3_verl.env.agent_loop.DialogueAgentLoop"


def register() -> None:
    """Make ``am3_dialogue`` resolvable by name in this process unless something configured it already."""
    from verl.experimental.agent_loop.agent_loop import _agent_loop_registry

    _agent_loop_registry.setdefault(AGENT_NAME, {"_target_": TARGET})


def is_registered() -> bool:
    """True if verl's agent-loop registry resolves ``am3_dialogue``."""
    from verl.experimental.agent_loop.agent_loop import _agent_loop_registry

    return AGENT_NAME in _agent_loop_registry
