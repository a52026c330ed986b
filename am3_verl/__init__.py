"""am3-verl: multi-modal multi-turn safety alignment (AM3Safety) as plugins for stock verl 0.9.1.

Subpackages, one responsibility each (data flows top to bottom):

* :mod:`am3_verl.dialogue` – the dialogue data model; :mod:`am3_verl.turn_scores` – the per-turn score contract
* :mod:`am3_verl.data` – source formats in, verl parquet out, with validation
* :mod:`am3_verl.env` – the dialogue agent loop that plays whole dialogues in GRPO rollouts
* :mod:`am3_verl.judges` – judge backends and the verl reward function
* :mod:`am3_verl.clients` – the shared OpenAI-compatible client machinery (concurrency, retries, images)
* :mod:`am3_verl.advantage` – the turn-aware dual-objective advantage (paper eqs. 6-9) and variants
* :mod:`am3_verl.eval` – evaluation metrics and the report
* :mod:`am3_verl.builder` – the InterSafe-V construction pipeline; :mod:`am3_verl.models` – LLaVA-NeXT support
* :mod:`am3_verl.local` – offline tiny models, the CPU platform, local generation, the loopback judge server
"""

__version__ = "0.1.0"
