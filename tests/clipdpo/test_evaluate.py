"""The evaluate stage end to end on tiny models through the loopback S3 server, and its bad-input handling."""

from __future__ import annotations

import json

import pytest
import torch

from clipdpo import determinism
from clipdpo.config import from_dict
from clipdpo.demo import models as tiny
from clipdpo.engines import HFEngine, ImageRequest, ModelSpec, option_token_ids
from clipdpo.evaluate.config import EvaluateConfig
from clipdpo.evaluate.data import EvalInputError
from clipdpo.evaluate.evaluation import evaluate_models
from clipdpo.storage import Storage, join


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval-models")
    return {
        "base": tiny.build_tiny_llava(str(root / "base"), seed=0),
        "trained": tiny.build_tiny_llava(str(root / "trained"), seed=5),
        "clip_config_dir": tiny.build_tiny_clip(str(root / "clip")),
    }


@pytest.fixture(scope="module")
def unloadable_models() -> dict:
    """Model paths for tests that must fail on their input before any model is loaded."""
    return {"base": "/nonexistent/base", "trained": "/nonexistent/trained", "clip_config_dir": "/nonexistent/clip"}


def eval_config(models: dict, inputs: dict, **amber_extra) -> dict:
    """`inputs`: the `inputs` fixture, with the spaCy model the AMBER NLP uses."""
    return {
        "models": [
            {"name": "base", "path": models["base"], "engine": "hf"},
            {"name": "trained", "path": models["trained"], "engine": "hf"},
        ],
        "amber": {
            "root": inputs["amber"],
            "nlp": {"backend": "spacy", "spacy_model": inputs["spacy_model"]},
            **amber_extra,
        },
        "zero_shot": {
            "datasets": [{"name": "colours", "root": inputs["zero_shot"]}],
            "text_encoder": {
                "model_name": tiny.TINY_CLIP_NAME,
                "pretrained": None,
                "model_config_dir": models["clip_config_dir"],
            },
        },
        "suite": [
            {"kind": "pope", "root": inputs["pope"], "images": join(inputs["suite"], "images")},
            {"kind": "scienceqa", "root": inputs["scienceqa"], "images": join(inputs["suite"], "images")},
        ],
        "max_new_tokens": 24,
        "chunk_size": 4,
    }


@pytest.fixture
def inputs(bucket, eval_set, spacy_model):
    storage = Storage()
    suite = eval_set.write_suite(storage, join(bucket, "suite"))
    return {
        "amber": eval_set.write_amber(storage, join(bucket, "AMBER")),
        "zero_shot": eval_set.write_zero_shot(storage, join(bucket, "colours")),
        "suite": join(bucket, "suite"),
        "spacy_model": spacy_model,
        **suite,
    }


def as_json(value):
    return json.loads(json.dumps(value))


@pytest.mark.slow
def test_evaluate_end_to_end_resumes_and_reports(models, inputs, bucket, tmp_path):
    from clipdpo.evaluate.__main__ import main

    storage = Storage()
    config_path = tmp_path / "evaluate.json"
    config_path.write_text(json.dumps(eval_config(models, inputs)))
    output = join(bucket, "eval")
    assert main(["--config", str(config_path), "--output", output]) == 0

    metrics = json.loads(storage.read_bytes(join(output, "metrics.json")))
    assert metrics["complete"] is True and metrics["baseline"] == "base"
    # every item answered once per model: 2 descriptions + 7 yes/no + 9 zero-shot captions + 6 POPE + 3 SQA
    assert metrics["inferred_items"] == {"base": 27, "trained": 27}
    for name in ("base", "trained"):
        result = metrics["results"][name]
        amber = result["amber"]
        assert amber["complete"] is True
        assert set(amber["generative"]) == {"chair", "cover", "hal", "cog"}
        assert amber["amber_score"] == pytest.approx(
            (100 - amber["generative"]["chair"] + amber["discriminative"]["f1"]) / 2, abs=0.01
        )
        assert result["zero_shot"]["colours"]["images"] == 9 and result["zero_shot"]["colours"]["classes"] == 3
        assert 0 <= result["zero_shot"]["colours"]["top1"] <= 100
        assert set(result["suite"]["pope"]["splits"]) == {"random", "popular"}
        assert result["suite"]["scienceqa"]["questions"] == 3
        # logits mode: the discriminative replies are exactly "Yes" or "No", which the official scorer reads
        folder = [u for u in storage.list(join(output, "responses", name)) if "amber-discriminative" in u]
        replies = [
            json.loads(line)["response"] for uri in folder for line in storage.read_bytes(uri).decode().splitlines()
        ]
        assert len(replies) == 7 and set(replies) <= {"Yes", "No"}
        assert len(folder) == 2  # chunks of 4: items 1-4 and 5-7
        # qualitative examples: the same first descriptions for every model, each with its image for the report
        assert [(e["id"], e["image"].rsplit("/", 1)[1]) for e in amber["examples"]] == [
            (1, "AMBER_1.jpg"),
            (2, "AMBER_2.jpg"),
        ]
    assert "en_core_web_md" in metrics["resources"]["amber_nlp"]
    assert metrics["resources"]["cpu"]["cpu_model"] == determinism.cpu_model()  # the machine beside its numbers
    # every headline delta with its paired bootstrap interval; the delta is the difference of the results
    effects = metrics["effects"]["trained"]
    assert {
        "amber.generative.chair",
        "amber.generative.hal",
        "amber.generative.cover",
        "amber.discriminative.f1",
        "amber.amber_score",
        "zero_shot.colours.top1",
        "suite.pope.headline",
        "suite.pope.accuracy_mean",
    } <= set(effects) and set(metrics["effects"]) == {"trained"}

    def value(name, path):
        tree = metrics["results"][name]
        for key in path.split(".")[:-1] if path.startswith("zero_shot") else path.split("."):
            tree = tree[key]
        return tree["top1"] if path.startswith("zero_shot") else tree

    for path, effect in effects.items():
        assert effect["delta"] == pytest.approx(value("trained", path) - value("base", path), abs=1e-9), path
        assert effect["resamples"] == 1000
        if path.startswith("suite.pope"):  # a resample of the red image alone has no 'popular' question: no interval
            assert effect["ci95"] is None
        else:
            assert effect["ci95"][0] <= effect["ci95"][1], path
    assert effects["amber.amber_score"]["images"] == 2 and effects["zero_shot.colours.top1"]["images"] == 9
    per_image = json.loads(storage.read_bytes(join(output, "per_image.json")))
    assert set(per_image) == {"base", "trained"} and "per_image" not in metrics

    report_md = storage.read_bytes(join(output, "report.md")).decode()
    for heading in (
        "## AMBER (Table 2)",
        "## Zero-shot classification via captions",
        "## LLaVA benchmark suite",
        "| Δ trained |",
        "## Resources",
        "paired bootstrap interval",
    ):
        assert heading in report_md
    assert "INCOMPLETE" not in report_md
    assert "<table>" in storage.read_bytes(join(output, "report.html")).decode()

    # a rerun reuses every saved response: no model is even loaded
    def no_model(spec):
        def fail():
            raise AssertionError(f"{spec.name} loaded on a fully cached rerun")

        return fail

    cfg = from_dict(EvaluateConfig, eval_config(models, inputs))
    again = evaluate_models(cfg, output, storage, engine_factory=no_model)
    assert as_json(again["results"]) == metrics["results"] and again["inferred_items"] == {"base": 0, "trained": 0}

    # a crash that lost one chunk redoes that chunk only (3 items), for that model only
    lost = [u for u in storage.list(join(output, "responses", "trained")) if "amber-discriminative" in u][-1]
    storage.delete(lost)
    resumed = evaluate_models(cfg, output, storage)
    assert resumed["inferred_items"] == {"base": 0, "trained": 3}
    assert as_json(resumed["results"]) == metrics["results"]  # greedy decoding: the same replies again


@pytest.mark.slow
def test_yes_no_by_logits_matches_a_forward_pass_per_request(models, eval_set):
    engine = HFEngine(ModelSpec(name="base", path=models["base"], engine="hf", device="cpu"), batch_size=3)
    image = eval_set.jpeg((200, 10, 10))
    from clipdpo.images import decode_image

    prompts = ["Is there a dog?", "Is the square red? Answer yes or no please, thank you.", "Cat?"]
    requests = [ImageRequest(decode_image(image), p, 1, 0) for p in prompts]
    chosen = engine.choose(requests, ["Yes", "No"])  # batched, left-padded
    yes_ids, no_ids = option_token_ids(engine.tokenizer, ["Yes", "No"])
    for request, got in zip(requests, chosen):
        inputs = engine.processor(
            images=[request.image], text=[engine._template(request.prompt, True)], return_tensors="pt"
        )
        with torch.no_grad():
            logits = engine.model(**inputs).logits[0, -1]
        expected = "Yes" if logits[yes_ids].max() > logits[no_ids].max() else "No"
        assert got == expected


@pytest.mark.slow
def test_options_sharing_a_first_token_are_refused(models):
    engine = HFEngine(ModelSpec(name="base", path=models["base"], engine="hf", device="cpu"))
    with pytest.raises(ValueError, match="cannot be told apart by logits"):
        option_token_ids(engine.tokenizer, ["yes", "Yes"])


def _no_engine(spec):
    def fail():
        raise AssertionError("a model was loaded although the input was bad")

    return fail


def test_missing_image_fails_before_any_model_loads(unloadable_models, inputs, bucket):
    storage = Storage()
    storage.delete(join(bucket, "AMBER", "image", "AMBER_2.jpg"))
    cfg = from_dict(EvaluateConfig, eval_config(unloadable_models, inputs))
    with pytest.raises(EvalInputError, match=r"amber-.*AMBER_2\.jpg"):
        evaluate_models(cfg, join(bucket, "out"), storage, engine_factory=_no_engine)
    assert not storage.exists(join(bucket, "out", "metrics.json"))


def test_question_file_errors_name_file_line_and_field(unloadable_models, inputs, bucket):
    storage = Storage()
    bad = [{"id": 1, "image": "red.jpg", "question": "Is it red?", "category": "random"}]  # no answer
    storage.write_bytes(join(inputs["pope"], "questions.jsonl"), (json.dumps(bad[0]) + "\n").encode())
    cfg = from_dict(EvaluateConfig, eval_config(unloadable_models, inputs))
    with pytest.raises(EvalInputError, match=r"pope/questions\.jsonl:1: field 'answer' is missing"):
        evaluate_models(cfg, join(bucket, "out"), storage, engine_factory=_no_engine)


def test_amber_query_file_in_the_wrong_layout(unloadable_models, inputs, bucket):
    storage = Storage()
    storage.write_bytes(join(inputs["amber"], "query", "query_all.json"), json.dumps({"1": "Describe"}).encode())
    cfg = from_dict(EvaluateConfig, eval_config(unloadable_models, inputs))
    with pytest.raises(ValueError, match=r"query_all\.json: expected \[\{\"id\""):
        evaluate_models(cfg, join(bucket, "out"), storage, engine_factory=_no_engine)


def test_zero_shot_folder_without_class_folders(unloadable_models, inputs, bucket):
    storage = Storage()
    config = eval_config(unloadable_models, inputs)
    config["zero_shot"]["datasets"] = [{"name": "empty", "root": join(bucket, "nothing-here")}]
    with pytest.raises(EvalInputError, match=r"zero_shot empty: no images under .*nothing-here/<class>/"):
        evaluate_models(from_dict(EvaluateConfig, config), join(bucket, "out"), storage, engine_factory=_no_engine)


@pytest.mark.slow
def test_missing_responses_are_refused_or_reported_incomplete(models, inputs, bucket, eval_set):
    storage = Storage()
    queries = [q for q in eval_set.amber_queries if q["id"] != 9]  # relation item 9 never asked
    storage.write_bytes(join(inputs["amber"], "query", "query_all.json"), json.dumps(queries).encode())
    config = eval_config(models, inputs)
    config.pop("zero_shot"), config.pop("suite")
    with pytest.raises(EvalInputError, match=r"no query for 1 id\(s\) .*\[9\]"):
        evaluate_models(from_dict(EvaluateConfig, config), join(bucket, "out"), storage, engine_factory=_no_engine)

    config["amber"]["allow_partial"] = True
    config["models"] = config["models"][:1]
    metrics = evaluate_models(from_dict(EvaluateConfig, config), join(bucket, "out"), storage)
    assert metrics["complete"] is False and metrics["results"]["base"]["amber"]["missing_ids"] == [9]
    assert "INCOMPLETE RESULTS" in storage.read_bytes(join(bucket, "out", "report.md")).decode()
    assert json.loads(storage.read_bytes(join(bucket, "out", "metrics.json")))["complete"] is False
