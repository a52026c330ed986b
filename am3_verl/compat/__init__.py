"""Every place am3-verl reaches into verl (or transformers, or vLLM) internals that have no public hook, in one package.

Each reach is written against verl :data:`VERL_VERSION` and listed in :data:`REACHES` with where it is
in verl, the am3-verl module that makes it and the upstream hook that would remove it. :func:`apply`
(called first by the plugin) checks the installed verl: on another release it raises
:class:`UnsupportedVerlVersion` listing every reach, instead of patching code it was not written for.

Modules: :mod:`.cpu` (CPU platform: process groups, FSDP engines, offload), :mod:`.loss_positions_head`
(the CPU language-model engine's output head at the loss's positions only), :mod:`.rollout` (rollout
adapter registry), :mod:`.qwen2_vl` (a verl bug), :mod:`.processors` (``hf_processor`` and the
LLaVA-NeXT image processor), :mod:`.continuous_token` (the LLaVA-NeXT token builder), :mod:`.trainer`
(per-step metrics and trainer modes), :mod:`.vllm_plugin` and :mod:`.vllm_llava_next` (vLLM's CPU linear
layers, LLaVA-NeXT's weight names and expanded prompts; vLLM applies them through am3-verl's
``vllm.general_plugins`` entry point, gated on its own vLLM version). The last entry of :data:`REACHES`
is a reliance, not a patch: :mod:`am3_verl.env.output` needs verl to call ``as_dict()`` after the
streaming reward.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from am3_verl.compat.cpu import register_fsdp_engines_for_cpu, unpinned_cpu_offload, use_gloo_process_group
from am3_verl.compat.qwen2_vl import fix_qwen2_vl_text_only_batches
from am3_verl.compat.rollout import register_rollout_adapter

VERL_VERSION = "0.9.1"
"""The verl release every reach below was written against and tested with."""


@dataclass(frozen=True)
class Reach:
    """One verl internal am3-verl depends on."""

    name: str
    """The internal, as a dotted name."""
    verl: str
    """Where it is in verl 0.9.1 (or the library named)."""
    module: str
    """The am3-verl module that reaches it."""
    hook: str
    """The upstream hook that would remove the reach."""


REACHES: tuple[Reach, ...] = (
    Reach(
        "verl.utils.distributed.initialize_global_process_group(_ray)",
        "utils/distributed.py:62-99, bound by name in workers/engine_workers.py and checkpoint_engine/base.py",
        "am3_verl.compat.cpu",
        "a backend option in initialize_global_process_group*",
    ),
    Reach(
        "verl.workers.engine.fsdp.transformer_impl.CPUOffloadPolicy",
        "workers/engine/fsdp/transformer_impl.py:462",
        "am3_verl.compat.cpu",
        "pin_memory following the device",
    ),
    Reach(
        "verl.workers.engine.base.EngineRegistry._engines (read)",
        "workers/engine/base.py:348",
        "am3_verl.compat.cpu",
        "FSDP engines registered for the cpu device, or a public lookup by device",
    ),
    Reach(
        "verl.workers.engine.fsdp.transformer_impl.FSDPEngineWithLMHead.forward_step/prepare_model_outputs (subclassed)",
        "workers/engine/fsdp/transformer_impl.py:1145-1600 (output_args temperature/input_ids_rmpad_rolled; "
        "workers/utils/losses.py sft_loss/ppo_loss positions)",
        "am3_verl.compat.loss_positions_head",
        "an engine option to run the output head only at the loss mask's positions",
    ),
    Reach(
        "verl.workers.rollout.base._ROLLOUT_REGISTRY",
        "workers/rollout/base.py:89",
        "am3_verl.compat.rollout",
        "a public register_rollout_class",
    ),
    Reach(
        "verl.models.transformers.qwen2_vl._get_input_embeds",
        "models/transformers/qwen2_vl.py:388-393",
        "am3_verl.compat.qwen2_vl",
        "verl unpacking the vision output in its text-only branch",
    ),
    Reach(
        "verl.utils.tokenizer.tokenizer.hf_processor (rebound in 8 modules)",
        "utils/tokenizer/tokenizer.py:182",
        "am3_verl.compat.processors",
        "a processor registry in hf_processor (or LLaVA-NeXT support)",
    ),
    Reach(
        "transformers LlavaNextImageProcessor._pad_for_batching (instance class swap)",
        "transformers 5.x image processors",
        "am3_verl.compat.processors",
        "a fixed crop-count option in the image processor",
    ),
    Reach(
        "verl.utils.tokenizer.continuous_token.ContinuousTokenBuilder._render_tokens/_merge_context_token_ids",
        "utils/tokenizer/continuous_token.py:206,226",
        "am3_verl.compat.continuous_token",
        "a public turn-boundary hook of the builder",
    ),
    Reach(
        "verl continuous-token builder selection (_CONTINUOUS_TOKEN_BUILDER_REGISTRY; builder replaced after init)",
        "utils/tokenizer/continuous_token_wiring.py",
        "am3_verl.compat.continuous_token",
        "a public register_continuous_token_builder(model_type, cls)",
    ),
    Reach(
        "verl.trainer.ppo.v1.trainer_base.PPOTrainer._compute_metrics",
        "trainer/ppo/v1/trainer_base.py:1868",
        "am3_verl.compat.trainer",
        "a public per-step metrics callback",
    ),
    Reach(
        "config.trainer.v1.trainer_mode rewritten to the base mode",
        "trainer/ppo/v1 (branches on the mode string)",
        "am3_verl.compat.trainer",
        "branching on the registered trainer class instead of the mode name",
    ),
    Reach(
        "verl.trainer.ppo.v1.trainer_base.PPOTrainer._save_checkpoint (called)",
        "trainer/ppo/v1/trainer_base.py:948",
        "am3_verl.compat.trainer",
        "a public save-now method on the trainer",
    ),
    Reach(
        "vllm.model_executor.layers.utils.dispatch_cpu_unquantized_gemm (always remove_weight=False)",
        "vLLM 0.24.0 model_executor/layers/linear.py:215 (CPU platform only; the vllm.general_plugins entry point)",
        "am3_verl.compat.vllm_plugin",
        "vLLM keeping, or repacking on reload, the CPU linear weights verl's weight sync loads into",
    ),
    Reach(
        "vllm LlavaNextForConditionalGeneration.hf_to_vllm_mapper (subclass registered through ModelRegistry)",
        "vLLM 0.24.0 model_executor/models/llava_next.py:228 (every platform; the vllm.general_plugins entry point)",
        "am3_verl.compat.vllm_llava_next",
        "vLLM mapping transformers 5's CLIP vision-tower weight names",
    ),
    Reach(
        "vllm BaseMultiModalProcessor._apply_hf_processor_main (LLaVA-NeXT token prompts already expanded)",
        "vLLM 0.24.0 multimodal/processing/processor.py:1258 (every platform; registered with MULTIMODAL_REGISTRY)",
        "am3_verl.compat.vllm_llava_next",
        "verl collapsing LLaVA's <image> runs before vLLM (as qwen2_5_vl_dedup_image_tokens does for Qwen-VL)",
    ),
    Reach(
        "AgentLoopOutput.as_dict() called after the streaming reward",
        "experimental/agent_loop (V1 trainer)",
        "am3_verl.env.output",
        "a documented hook for per-token rewards of an agent loop",
    ),
)
"""Every verl internal am3-verl depends on; :class:`UnsupportedVerlVersion` lists them."""


class UnsupportedVerlVersion(RuntimeError):
    """The installed verl is not the release am3-verl's compatibility reaches were written for."""


def installed_verl_version() -> str:
    """The version string of the installed verl package."""
    import verl

    return str(getattr(verl, "__version__", "unknown"))


REQUIRED_VERL_FILE = "REQUIRED_VERL.txt"
"""Next to every recipe folder's files (``recipes/*/REQUIRED_VERL.txt``): the verl release they need, as
``KEY=VALUE`` lines (``UPSTREAM``, ``MODE``, ``VERSION``, ``PIP_INSTALL``, ``NOTES``), verl-recipe's convention."""


def read_required_verl(path: str | os.PathLike) -> dict[str, str]:
    """The ``KEY=VALUE`` lines of a ``REQUIRED_VERL.txt`` (``#`` comments and blank lines skipped).

    Raises ``ValueError`` naming the file and line for a line that is not ``KEY=VALUE`` or a repeated key."""
    entries: dict[str, str] = {}
    with open(path, encoding="utf-8") as fh:
        for number, raw in enumerate(fh, start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            key, sep, value = line.partition("=")
            if not sep or not key.strip().isidentifier() or key.strip() in entries:
                raise ValueError(f"{path} line {number}: expected a new KEY=VALUE line, got {line!r}")
            entries[key.strip()] = value.strip()
    return entries


def check_verl_version() -> None:
    """Raise :class:`UnsupportedVerlVersion`, listing every reach, unless verl is :data:`VERL_VERSION`."""
    found = installed_verl_version()
    if found != VERL_VERSION:
        raise UnsupportedVerlVersion(
            f"am3-verl was written for verl {VERL_VERSION} (the release named in recipes/*/{REQUIRED_VERL_FILE}) and "
            f"reaches into these verl internals, which have no public hook: {'; '.join(reach.name for reach in REACHES)}. Installed verl is {found}: install "
            f"verl=={VERL_VERSION} (pip install 'verl[verl-core]=={VERL_VERSION}') or port am3_verl/compat to it."
        )


def apply(cpu_platform: bool) -> None:
    """Check the verl version, then apply the patches (the CPU ones only for the CPU platform).

    The other reaches are made by the modules that need them when they register (rollout adapter,
    ``hf_processor``) or are used (token builder, trainer modes).
    """
    check_verl_version()
    fix_qwen2_vl_text_only_batches()
    if cpu_platform:
        use_gloo_process_group()
        unpinned_cpu_offload()
        register_fsdp_engines_for_cpu()


__all__ = [
    "REACHES",
    "VERL_VERSION",
    "Reach",
    "UnsupportedVerlVersion",
    "apply",
    "check_verl_version",
    "fix_qwen2_vl_text_only_batches",
    "installed_verl_version",
    "register_fsdp_engines_for_cpu",
    "register_rollout_adapter",
    "unpinned_cpu_offload",
    "use_gloo_process_group",
]
