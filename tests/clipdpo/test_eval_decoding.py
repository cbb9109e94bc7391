"""Sampled decoding of AMBER's descriptions: every item answered N times (seeded), the decoding in the
response key and in metrics.json, greedy as before when not set."""

from __future__ import annotations

import json

import pytest
from test_evaluate import as_json, eval_config, inputs, models  # noqa: F401 (fixtures)

from clipdpo.config import from_dict
from clipdpo.engines import ModelSpec
from clipdpo.evaluate.config import DecodingConfig, EvaluateConfig
from clipdpo.evaluate.data import Item
from clipdpo.evaluate.evaluation import evaluate_models
from clipdpo.evaluate.infer import Task, task_key
from clipdpo.storage import Storage, join

SAMPLED = {"temperature": 1.0, "top_p": 1.0, "samples": 2, "seed": 3}


def amber_only(models: dict, inputs: dict, **amber_extra) -> EvaluateConfig:
    config = {**eval_config(models, inputs, **amber_extra), "zero_shot": None, "suite": []}
    config["models"] = config["models"][:1]
    return from_dict(EvaluateConfig, config)


def test_decoding_is_part_of_the_response_key_and_greedy_keeps_its_key():
    spec = ModelSpec(name="base", path="/x")
    items = [Item(id="1", image="s3://b/1.jpg", prompt="Describe this image.")]
    greedy = Task("amber-generative", items, max_new_tokens=24)
    keys = {
        task_key(spec, Task("amber-generative", items, max_new_tokens=24, decoding=DecodingConfig(**d)))
        for d in (SAMPLED, {**SAMPLED, "seed": 4}, {**SAMPLED, "samples": 3}, {**SAMPLED, "temperature": 0.7})
    }
    assert len(keys) == 4 and task_key(spec, greedy) not in keys
    # the greedy key is the one responses were saved under before decoding existed: 38b768c2e73d is what
    # task_key gave for this task on main before this change (no decoding field hashed for greedy)
    assert (
        task_key(spec, Task("amber-generative", items, max_new_tokens=24, decoding=DecodingConfig()))
        == task_key(spec, greedy)
        == "38b768c2e73d"
    )


def test_bad_decoding_is_refused_naming_the_field():
    with pytest.raises(ValueError, match="samples with temperature 0"):
        DecodingConfig(samples=3)
    with pytest.raises(ValueError, match="samples must be >= 1, got 0"):
        DecodingConfig(temperature=1.0, samples=0)
    parsed = {
        "models": [{"name": "b", "path": "m", "engine": "hf"}],
        "amber": {"root": "r", "decoding": {"temperature": 1.0, "samples": 0}},
    }
    with pytest.raises(ValueError, match=r"amber\.decoding\.samples must be >= 1, got 0"):
        from_dict(EvaluateConfig, parsed)


@pytest.mark.slow  # three evaluations with a tiny LLaVA, like test_evaluate's model tests
def test_sampled_descriptions_are_seeded_resumable_and_all_scored(models, inputs, bucket):
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    storage = Storage()
    cfg = amber_only(models, inputs, decoding=SAMPLED)
    output = join(bucket, "sampled")
    metrics = evaluate_models(cfg, output, storage)

    folders = {uri.split("/")[-2] for uri in storage.list(join(output, "responses", "base"))}
    generative = [u for u in storage.list(join(output, "responses", "base")) if "amber-generative" in u]
    rows = [json.loads(line) for uri in generative for line in storage.read_bytes(uri).decode().splitlines()]
    assert [row["id"] for row in rows] == ["1", "2"]
    assert all(len(row["samples"]) == 2 and row["response"] == row["samples"][0] for row in rows)
    # the yes/no half is untouched: one answer per item, no samples
    discriminative = [u for u in storage.list(join(output, "responses", "base")) if "amber-discriminative" in u]
    assert all(
        "samples" not in json.loads(line)
        for uri in discriminative
        for line in storage.read_bytes(uri).decode().splitlines()
    )
    assert metrics["resources"]["amber_decoding"]["samples"] == 2
    assert "2 answer(s) per description item" in storage.read_bytes(join(output, "report.md")).decode()
    assert [e["response"] for e in metrics["results"]["base"]["amber"]["examples"]] == [r["response"] for r in rows]

    # a lost chunk is redone with the same seeds: the same samples, the same metrics
    storage.delete(generative[0])
    again = evaluate_models(cfg, output, storage)
    assert again["inferred_items"] == {"base": 2}
    redone = [json.loads(line) for line in storage.read_bytes(generative[0]).decode().splitlines()]
    assert redone == rows and as_json(again["results"]) == as_json(metrics["results"])

    # greedy (the default) in the same output: the descriptions get a folder of their own (never the sampled
    # rows), while the yes/no answers, which the decoding does not decide, are reused
    greedy = evaluate_models(amber_only(models, inputs), output, storage)
    new = {uri.split("/")[-2] for uri in storage.list(join(output, "responses", "base"))} - folders
    assert len(new) == 1 and new.pop().startswith("amber-generative-")
    assert greedy["inferred_items"] == {"base": 2}
    assert greedy["resources"]["amber_decoding"]["samples"] == 1
    assert "greedy" in greedy["resources"]["amber_decoding"]["description"]
