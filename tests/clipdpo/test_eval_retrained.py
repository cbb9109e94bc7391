"""A model retrained at the same path gets fresh evaluation responses (a pipeline rerun
after a filter change retrains `<run>/model/model`; its evaluation reused the earlier model's replies)."""

from __future__ import annotations

import shutil

from pairs_fixture import png

from clipdpo.demo.models import build_tiny_llava
from clipdpo.engines import HFEngine, ModelSpec
from clipdpo.evaluate.data import Item
from clipdpo.evaluate.infer import Responder, Task
from clipdpo.storage import Storage, join


def answer(spec: ModelSpec, output: str, task: Task) -> tuple[dict, int]:
    responder = Responder(spec, output, Storage(), lambda: HFEngine(spec, batch_size=2), chunk_size=2)
    return responder.answer(task), responder.inferred


def test_responses_are_keyed_by_the_models_content(tmp_path):
    storage = Storage()
    images = [join(str(tmp_path / "images"), f"{k}.png") for k in range(3)]
    for k, uri in enumerate(images):
        storage.write_bytes(uri, png(k))
    task = Task(
        "describe",
        [Item(id=str(k), image=uri, prompt="Describe the image.") for k, uri in enumerate(images)],
        max_new_tokens=3,
    )
    path, output = str(tmp_path / "model"), str(tmp_path / "evaluation")
    spec = ModelSpec(name="clip-dpo", path=build_tiny_llava(path, seed=0), engine="hf", device="cpu")
    first, inferred = answer(spec, output, task)
    assert inferred == 3
    assert answer(spec, output, task) == (first, 0)  # the same model: every reply read back
    shutil.rmtree(path)
    build_tiny_llava(path, seed=5)  # retrained in place: same name, same path, other weights
    _, inferred = answer(spec, output, task)
    assert inferred == 3  # answered again, not read back from the earlier model's chunks
