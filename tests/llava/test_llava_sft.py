"""Cold-start SFT on LLaVA-NeXT: verl's MultiTurnSFTDataset tokenisation and verl's SFT trainer on the CPU."""

import os
import re
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from transformers import AutoProcessor
from verl.utils.dataset.multiturn_sft_dataset import MultiTurnSFTDataset
from verl.utils.dataset.vision_utils import process_image

from llava_rows import sft_rows

CPU_OVERRIDES = [
    "trainer.device=cpu",
    "engine.strategy=fsdp2",
    "model.use_remove_padding=False",
    "+model.override_config.attn_implementation=sdpa",
]


@pytest.fixture
def sft_parquet(tmp_path):
    path = tmp_path / "sft.parquet"
    pq.write_table(pa.Table.from_pylist(sft_rows(8)), path)
    return path


@pytest.mark.slow
def test_dataset_expands_each_image_to_its_any_resolution_token_count(tiny_llava_dir, sft_parquet):
    from verl.utils import hf_processor, hf_tokenizer

    processor = hf_processor(str(tiny_llava_dir))
    stock = AutoProcessor.from_pretrained(tiny_llava_dir)
    dataset = MultiTurnSFTDataset(
        [str(sft_parquet)], hf_tokenizer(str(tiny_llava_dir)), {"max_length": 512, "pad_mode": "no_padding"}, processor=processor
    )
    image_id = processor.image_token_id
    for index in range(4):
        item = dataset[index]
        # verl's own image loading (resize to a multiple of 2 ViT patches), then the stock processor's count
        pil = [process_image(im, image_patch_size=14) for im in dataset.dataframe.iloc[index]["images"]]
        expected = [int((stock(text=["<image>"], images=[im], return_tensors="pt")["input_ids"] == image_id).sum()) for im in pil]
        ids = item["input_ids"]
        assert int((ids == image_id).sum()) == sum(expected)
        mm = item["multi_modal_inputs"]
        # both turns' images survive verl's per-turn merge (they would be dropped with unequal crop counts)
        assert mm["pixel_values"].shape[:2] == (2, 5) and mm["image_sizes"].shape == (2, 2)
        # loss only on the two assistant replies
        trained = processor.tokenizer.decode(ids[item["loss_mask"].bool()])
        assert "A coloured square." in trained and "I'm sorry" in trained and "picture" not in trained
    assert len({tuple(dataset[i]["multi_modal_inputs"]["image_sizes"].flatten().tolist()) for i in range(4)}) == 4


@pytest.mark.slow
def test_verl_sft_trainer_runs_two_steps_on_cpu_with_llava(tiny_llava_dir, sft_parquet, tmp_path):
    ckpt = tmp_path / "ckpt"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=1",
        "-m", "verl.trainer.sft_trainer",
        f"data.train_files={sft_parquet}", "data.val_files=null", "data.train_batch_size=4",
        "data.micro_batch_size_per_gpu=2", "data.max_length=512", "data.use_dynamic_bsz=False", "data.num_workers=0",
        f"model.path={tiny_llava_dir}", "optim.lr=1e-3",
        "trainer.total_training_steps=2", "trainer.save_freq=2", "trainer.logger=[console]",
        f"trainer.default_local_dir={ckpt}", "trainer.resume_mode=disable",
        *CPU_OVERRIDES,
    ]  # fmt: skip
    # The plugin entry point activates the support too; the module makes the test independent of it.
    env = {**os.environ, "VERL_PLATFORM": "cpu", "OMP_NUM_THREADS": "2", "VERL_USE_EXTERNAL_MODULES": "am3_verl.models.enable"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    losses = [float(x) for x in re.findall(r"train/loss:([0-9.]+)", log)]
    assert len(losses) == 2 and losses[0] != losses[1], log[-4000:]
    assert (ckpt / "global_step_2" / "model_world_size_1_rank_0.pt").stat().st_size > 1_000_000
    assert (ckpt / "latest_checkpointed_iteration.txt").read_text().strip() == "2"
