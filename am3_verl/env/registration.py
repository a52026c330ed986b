"""Registers ``am3_dialogue`` with verl's public agent-loop registration (called by the verl plugin).

The plugin runs at ``import verl``, before any ``AgentLoopWorker`` exists, so an agent-loop YAML
(``actor_rollout_ref.rollout.agent.agent_loop_config_path``) that configures ``am3_dialogue`` with
constructor keys, loaded later by the worker, still wins. The loop class carries no ``@register``
decorator for the same reason: a module first imported while verl instantiates the YAML's entry would
overwrite that entry with a bare one; registering here imports it before any YAML is read.
"""

from __future__ import annotations

from am3_verl.env import AGENT_NAME

_registered = False


def register() -> None:
    """Register :class:`~am3_verl.env.agent_loop.DialogueAgentLoop` as ``am3_dialogue`` through verl's ``register``."""
    global _registered
    from verl.experimental.agent_loop.agent_loop import register as register_agent_loop

    from am3_verl.env.agent_loop import DialogueAgentLoop

    register_agent_loop(AGENT_NAME)(DialogueAgentLoop)
    _registered = True


def is_registered() -> bool:
    """True once :func:`register` has handed ``am3_dialogue`` to verl's registration in this process."""
    return _registered
