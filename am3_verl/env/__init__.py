"""The multi-turn multimodal dialogue environment: the verl agent loop that plays whole dialogues."""
