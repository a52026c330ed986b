"""Which weight-sync check a run gets, decided on verl's composed ``ppo_trainer`` config.

The checks themselves run through ``main_ppo``: the recomputed gap in tests/ppo/test_ppo_main.py and
test_ppo_vllm.py, the bypass-mode one (positive and negative control) in test_ppo_main.py's resumed run,
and in the miniature's learning test (bypass mode, every step).
"""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from am3_verl.local.rollout import verl_config_dir
from am3_verl.training import weight_sync

BYPASS = "algorithm.rollout_correction.bypass_mode=True"


def compose_ppo(*overrides: str):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=verl_config_dir(), version_base=None):
        return compose(config_name="ppo_trainer", overrides=["data.train_batch_size=4", *overrides])


def test_recomputed_old_log_probs_are_compared_token_by_token():
    mode, why = weight_sync.sync_check_mode(compose_ppo("actor_rollout_ref.actor.ppo_mini_batch_size=2"))
    assert mode == weight_sync.RECOMPUTED and "logprob_abs_diff" in why


def test_bypass_mode_with_one_mini_batch_of_one_epoch_reads_the_updates_kl():
    config = compose_ppo(BYPASS, "actor_rollout_ref.actor.ppo_mini_batch_size=4")
    assert weight_sync.sync_check_mode(config)[0] == weight_sync.BYPASS_UPDATE
    assert weight_sync.bypass_sync_metrics({"actor/ppo_kl": 0.0123, "actor/pg_loss": 1.0}) == {weight_sync.BYPASS_KL: 0.0123}
    with pytest.raises(KeyError, match="actor/ppo_kl"):
        weight_sync.bypass_sync_metrics({"actor/pg_loss": 1.0})


@pytest.mark.parametrize(
    "override, named",
    [("actor_rollout_ref.actor.ppo_mini_batch_size=2", "ppo_mini_batch_size=2"), ("actor_rollout_ref.actor.ppo_epochs=2", "ppo_epochs=2")],
)
def test_bypass_mode_with_later_updates_inside_the_step_has_no_check_and_says_why(override, named):
    mode, why = weight_sync.sync_check_mode(compose_ppo(BYPASS, "actor_rollout_ref.actor.ppo_mini_batch_size=4", override))
    assert mode is None and named in why and "no step metric checks the weight sync" in why
