"""The multi-turn multimodal dialogue environment: the verl agent loop that plays whole dialogues."""

AGENT_NAME = "am3_dialogue"
"""The name rows and agent-loop YAMLs select the dialogue loop by (:class:`am3_verl.env.agent_loop.DialogueAgentLoop`)."""
