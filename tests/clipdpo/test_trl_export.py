"""The filter's TRL export is a dataset TRL loads as it is: `datasets` reads the Parquet with
its images decoded (the very pixels of the images artifact), TRL's vision preference collator
turns rows into model inputs, and DPOTrainer accepts it and yields a batch."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from pairs_fixture import write_pairs
from PIL import Image

from clipdpo.artifacts import Artifact
from clipdpo.filter.export import read_pair_images, trl_parquet, trl_table
from clipdpo.storage import Storage


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(path of the exported Parquet, the pairs table, their images table), through the real artifact code."""
    root = tmp_path_factory.mktemp("trl")
    storage = Storage()
    pairs = Artifact.open(storage, write_pairs(str(root / "art"), n_pairs=6, n_shards=1), kind="pairs")
    table = pairs.read_shard(pairs.shard_names[0])
    images = read_pair_images(storage, table)
    path = root / "part-00000.parquet"
    path.write_bytes(trl_parquet(table, images))
    return str(path), table, images


@pytest.fixture(scope="module")
def processor(tmp_path_factory):
    from transformers import AutoProcessor

    from clipdpo.demo import models as tiny

    path = tiny.build_tiny_llava(str(tmp_path_factory.mktemp("llava") / "model"))
    return path, AutoProcessor.from_pretrained(path)


def test_datasets_loads_the_export_with_the_images_decoded(exported):
    import datasets

    path, pairs, images = exported
    dataset = datasets.load_dataset("parquet", data_files=path, split="train")
    assert isinstance(dataset.features["images"].feature, datasets.Image)
    assert len(dataset) == pairs.num_rows
    original = dict(zip(images.column("image_id").to_pylist(), images.column("image").to_pylist()))
    for row, image_id, prompt, chosen in zip(
        dataset,
        pairs.column("image_id").to_pylist(),
        pairs.column("prompt").to_pylist(),
        pairs.column("chosen").to_pylist(),
    ):
        assert isinstance(row["images"][0], Image.Image)
        expected = np.asarray(Image.open(io.BytesIO(original[image_id])).convert("RGB"))
        assert np.array_equal(np.asarray(row["images"][0].convert("RGB")), expected)  # PNG: lossless
        assert row["prompt"] == [{"role": "user", "content": prompt}]
        assert row["chosen"] == [{"role": "assistant", "content": chosen}] and row["image_id"] == image_id


@pytest.mark.slow  # builds a tiny LLaVA and loads TRL
def test_trls_vision_preference_collator_takes_the_rows_as_they_are(exported, processor):
    import datasets
    from trl.trainer.dpo_trainer import DataCollatorForVisionPreference

    _, model_processor = processor
    dataset = datasets.load_dataset("parquet", data_files=exported[0], split="train")
    batch = DataCollatorForVisionPreference(model_processor)([dataset[0], dataset[1]])
    image_token = model_processor.tokenizer.convert_tokens_to_ids(model_processor.image_token)
    assert batch["pixel_values"].shape[0] == 4  # 2 rows x (chosen, rejected)
    assert batch["input_ids"].shape[0] == 4 and (batch["input_ids"] == image_token).any(dim=1).all()
    assert batch["completion_mask"].sum(dim=1).gt(0).all()  # every row has completion tokens


@pytest.mark.slow  # builds a tiny LLaVA and loads TRL
def test_dpo_trainer_accepts_the_export_and_yields_a_batch(exported, processor, tmp_path):
    import datasets
    import torch
    from transformers import LlavaForConditionalGeneration
    from trl import DPOConfig, DPOTrainer

    torch.set_num_threads(1)
    model_path, model_processor = processor
    dataset = datasets.load_dataset("parquet", data_files=exported[0], split="train")
    args = DPOConfig(
        output_dir=str(tmp_path),
        per_device_train_batch_size=2,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        max_steps=1,
        bf16=False,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    trainer = DPOTrainer(
        model=LlavaForConditionalGeneration.from_pretrained(model_path),
        args=args,
        train_dataset=dataset,
        processing_class=model_processor,
    )
    batch = next(iter(trainer.get_train_dataloader()))
    assert batch["input_ids"].shape[0] == 4 and "pixel_values" in batch
    assert trainer.train().training_loss > 0


def test_a_pair_without_image_bytes_is_a_clear_error(exported):
    _, pairs, images = exported
    with pytest.raises(ValueError, match="no image bytes for image_id"):
        trl_table(pairs, images.slice(1))
    assert trl_table(pairs.slice(0, 0), images).num_rows == 0
    assert os.path.getsize(exported[0]) > sum(len(b) for b in images.column("image").to_pylist()) // 2


def test_a_16_bit_image_is_exported_as_the_pixels_the_project_sees_and_others_are_kept_as_stored():
    """`datasets` and a transformers processor turn a 16-bit image white (Pillow's plain convert("RGB")): the export
    embeds what the project's decoder shows instead; other images keep their bytes."""
    import pyarrow as pa

    from clipdpo.images import decode_image

    def encoded(image):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return buffer.getvalue()

    ramp = np.array([[0, 257, 32896, 65535]], dtype="<u2")
    wide, plain = encoded(Image.frombytes("I;16", (4, 1), ramp.tobytes())), encoded(Image.new("RGB", (4, 1), (1, 2, 3)))
    images = pa.table({"image_id": ["wide", "plain"], "image": pa.array([wide, plain], pa.binary())})
    pairs = pa.table(
        {
            "image_id": ["wide", "plain"],
            "prompt": ["p", "p"],
            "chosen": ["a", "a"],
            "rejected": ["b", "b"],
            "kind": ["caption", "caption"],
        }
    )
    embedded = {row["image_id"]: row["images"][0]["bytes"] for row in trl_table(pairs, images).to_pylist()}
    assert embedded["plain"] == plain
    as_others_read = np.asarray(Image.open(io.BytesIO(embedded["wide"])).convert("RGB"))
    assert as_others_read[0, :, 0].tolist() == [0, 1, 128, 255]  # v / 257, not white
    assert np.array_equal(as_others_read, np.asarray(decode_image(wide)))
