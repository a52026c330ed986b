"""What keeps a long training run honest: its judge-failure budget, the judge's startup probe and complete checkpoints.

The am3 V1 trainer modes (:mod:`am3_verl.advantage.trainer_modes`) apply all three; their settings are the
``trainer.am3`` section (:mod:`.config`).
"""
