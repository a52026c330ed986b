"""am3_verl.compat: every reach in one place, the version gate, the adapter registry guard, the Qwen2-VL fix."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from am3_verl import compat

PACKAGE = Path(compat.__file__).resolve().parents[1]

PINNED_REACHES = [
    ("verl.utils.distributed.initialize_global_process_group(_ray)", "am3_verl.compat.cpu"),
    ("verl.workers.engine.fsdp.transformer_impl.CPUOffloadPolicy", "am3_verl.compat.cpu"),
    ("verl.workers.engine.base.EngineRegistry._engines (read)", "am3_verl.compat.cpu"),
    (
        "verl.workers.engine.fsdp.transformer_impl.FSDPEngineWithLMHead.forward_step/prepare_model_outputs (subclassed)",
        "am3_verl.compat.loss_positions_head",
    ),
    ("verl.workers.rollout.base._ROLLOUT_REGISTRY", "am3_verl.compat.rollout"),
    ("verl.models.transformers.qwen2_vl._get_input_embeds", "am3_verl.compat.qwen2_vl"),
    ("verl.utils.tokenizer.tokenizer.hf_processor (rebound in 8 modules)", "am3_verl.compat.processors"),
    ("transformers LlavaNextImageProcessor._pad_for_batching (instance class swap)", "am3_verl.compat.processors"),
    (
        "verl.utils.tokenizer.continuous_token.ContinuousTokenBuilder._render_tokens/_merge_context_token_ids",
        "am3_verl.compat.continuous_token",
    ),
    (
        "verl continuous-token builder selection (_CONTINUOUS_TOKEN_BUILDER_REGISTRY; builder replaced after init)",
        "am3_verl.compat.continuous_token",
    ),
    ("verl.trainer.ppo.v1.trainer_base.PPOTrainer._compute_metrics", "am3_verl.compat.trainer"),
    ("config.trainer.v1.trainer_mode rewritten to the base mode", "am3_verl.compat.trainer"),
    ("verl.trainer.ppo.v1.trainer_base.PPOTrainer._save_checkpoint (called)", "am3_verl.compat.trainer"),
    (
        "vllm.model_executor.layers.utils.dispatch_cpu_unquantized_gemm (always remove_weight=False)",
        "am3_verl.compat.vllm_plugin",
    ),
    (
        "vllm LlavaNextForConditionalGeneration.hf_to_vllm_mapper (subclass registered through ModelRegistry)",
        "am3_verl.compat.vllm_llava_next",
    ),
    (
        "vllm BaseMultiModalProcessor._apply_hf_processor_main (LLaVA-NeXT token prompts already expanded)",
        "am3_verl.compat.vllm_llava_next",
    ),
    ("AgentLoopOutput.as_dict() called after the streaming reward", "am3_verl.env.output"),
]

PRIVATE_VERL_NAMES = re.compile(
    r"from verl[\w.]* import [^\n]*\b_[a-z]|\b(_agent_loop_registry|_ROLLOUT_REGISTRY|_CONTINUOUS_TOKEN_BUILDER_REGISTRY"
    r"|_engines|_render_tokens|_merge_context_token_ids|_pad_for_batching|_compute_metrics|_get_input_embeds)\b"
)


def test_the_reaches_are_pinned_and_each_names_its_hook():
    assert [(reach.name, reach.module) for reach in compat.REACHES] == PINNED_REACHES
    for reach in compat.REACHES:
        assert reach.verl and reach.hook
        assert (PACKAGE.parent / (reach.module.replace(".", "/") + ".py")).is_file()


def test_no_module_outside_compat_reaches_into_verl_internals():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        if relative.startswith(("compat/", "testing/")):
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if PRIVATE_VERL_NAMES.search(line) and not line.lstrip().startswith(("#", '"', "*", "``")):
                offenders.append(f"am3_verl/{relative}:{number}: {line.strip()}")
    assert offenders == []


def test_another_verl_version_is_refused_with_every_reach_listed(monkeypatch):
    monkeypatch.setattr(compat, "installed_verl_version", lambda: "0.9.2")
    with pytest.raises(compat.UnsupportedVerlVersion) as error:
        compat.check_verl_version()
    message = str(error.value)
    assert "0.9.2" in message and compat.VERL_VERSION in message
    for reach in compat.REACHES:
        assert reach.name in message


@pytest.mark.slow  # a fresh interpreter that imports verl
def test_importing_the_plugin_under_another_verl_version_fails_listing_the_reaches():
    code = (
        "import json, verl\n"
        "verl.__version__ = '0.10.0'\n"
        "try:\n    import am3_verl.plugin\nexcept Exception as e:\n    print(json.dumps([type(e).__name__, str(e)]))\n"
    )
    # Entry-point discovery off, so the plugin is first imported after the version is changed.
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("VERL_")}, "VERL_USE_EXTERNAL_PLUGINS": "none"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    import json

    kind, message = json.loads(result.stdout.strip().splitlines()[-1])
    assert kind == "UnsupportedVerlVersion" and "0.10.0" in message
    for reach in compat.REACHES:
        assert reach.name in message


def test_the_installed_verl_is_the_supported_one():
    compat.check_verl_version()


def test_a_taken_rollout_adapter_name_is_never_overwritten():
    from verl.workers.rollout.base import _ROLLOUT_REGISTRY

    with pytest.raises(ValueError, match="already maps"):
        compat.register_rollout_adapter("vllm", "somewhere.Else")
    assert _ROLLOUT_REGISTRY[("vllm", "async")] == "verl.workers.rollout.vllm_rollout.ServerAdapter"


@pytest.fixture(scope="module")
def tiny_qwen_inner(tiny_qwen_dir):
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(tiny_qwen_dir, dtype=torch.float32).model.eval()


def test_verl_still_crashes_on_text_only_qwen2_vl_batches(tiny_qwen_inner):
    """Fails the day verl fixes models/transformers/qwen2_vl.py:393: then drop fix_qwen2_vl_text_only_batches."""
    from verl.models.transformers import qwen2_vl

    original = qwen2_vl._get_input_embeds.__wrapped__
    with pytest.raises(AttributeError, match="mean"):
        original(tiny_qwen_inner, torch.tensor([[9707, 1879]]))


def test_the_fix_embeds_text_only_batches(tiny_qwen_inner):
    from verl.models.transformers import qwen2_vl

    fixed = qwen2_vl._get_input_embeds
    assert getattr(fixed, "_am3_compat", False)  # applied by the plugin at `import verl`
    ids = torch.tensor([[9707, 1879, 151645]])
    embeds, mask = fixed(tiny_qwen_inner, ids, torch.ones_like(ids))
    torch.testing.assert_close(embeds, tiny_qwen_inner.get_input_embeddings()(ids))
    assert mask.shape == ids.shape
    # the vision tower takes part (zero-weighted), so every FSDP rank touches the same parameters
    embeds.sum().backward()
    assert any(p.grad is not None for p in tiny_qwen_inner.visual.parameters())


def test_the_fix_hands_image_batches_to_verl_unchanged(tiny_qwen_inner, tiny_qwen_dir):
    from PIL import Image
    from transformers import AutoProcessor
    from verl.models.transformers import qwen2_vl

    processor = AutoProcessor.from_pretrained(tiny_qwen_dir)
    inputs = processor(
        text=["<|vision_start|><|image_pad|><|vision_end|>Hello"], images=[Image.new("RGB", (56, 56), "red")], return_tensors="pt"
    )
    args = (tiny_qwen_inner, inputs["input_ids"], inputs["attention_mask"], inputs["pixel_values"], None, inputs["image_grid_thw"], None)
    with torch.no_grad():
        fixed, _ = qwen2_vl._get_input_embeds(*args)
        original, _ = qwen2_vl._get_input_embeds.__wrapped__(*args)
    torch.testing.assert_close(fixed, original, rtol=0, atol=0)
