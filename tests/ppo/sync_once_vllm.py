"""Negative control for the vLLM weight-sync check: verl's vLLM adapter, delivering only the first weight update.

Imported in every verl process of a run through ``VERL_USE_EXTERNAL_MODULES=sync_once_vllm`` (with this
folder on ``PYTHONPATH``). Test-only: it replaces the adapter verl 0.9.1 names for ``rollout.name=vllm``
in its private registry, so the run keeps verl's own vLLM replica, server and weight sender, and only
the adapter in the training workers differs (:class:`sync_once_vllm_adapter.SyncOnceServerAdapter`).
"""

from verl.workers.rollout import base

base._ROLLOUT_REGISTRY[("vllm", "async")] = "sync_once_vllm_adapter.SyncOnceServerAdapter"
