"""POVID's LLM path end to end: ground truth from LLaVA's conversation JSON on S3, the Table 6 prompt through
the generate stage's hf engine, every reply validated, a pairs artifact written on the S3 test server by the
pipeline's own step function. The injector is a real tiny Llama whose reply its weights script
(tests/scripted_llm.py), so every count and row is known in advance; no part of the path is mocked."""

from __future__ import annotations

import io
import json

from PIL import Image
from scripted_llm import build_scripted_llm

from clipdpo import outputref, steps
from clipdpo.artifacts import Artifact
from clipdpo.report.step_metrics import pairs_numbers
from clipdpo.storage import Storage, join

REWRITE = "two people walking near the river ."
QUESTION = "Describe the image in detail."


def record(number: int, image: str, answer: str) -> dict:
    return {
        "id": str(number),
        "image": image,
        "conversations": [{"from": "human", "value": f"<image>\n{QUESTION}"}, {"from": "gpt", "value": answer}],
    }


GROUND_TRUTH = [
    record(1, "coco/a.jpg", "Two people walking near the river."),  # the injector's rewrite again: identical
    record(2, "coco/b.jpg", "There are two people walking near a river!"),  # the same content words
    record(3, "coco/c.jpg", "A cat sleeping near the window."),  # kept: the rewrite is its rejected answer
    record(4, "coco/not-ingested.jpg", "A dog on a red sofa."),  # no such image in the run: never asked
]  # coco/d.jpg has no record: counted as an image without ground truth


def write_run(root: str, tmp_path) -> str:
    """The run's images (coco/a..d.jpg, ingested by the pipeline's step) and the ground truth on S3; its URI."""
    folder = tmp_path / "photos"
    (folder / "coco").mkdir(parents=True)
    for name, colour in zip("abcd", [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30)]):
        buffer = io.BytesIO()
        Image.new("RGB", (24, 24), colour).save(buffer, format="JPEG")
        (folder / "coco" / f"{name}.jpg").write_bytes(buffer.getvalue())
    steps.ingest_step(root, str(folder), "{}")
    uri = join(root, "ground-truth", "llava.json")
    Storage().write_bytes(uri, json.dumps(GROUND_TRUTH).encode())
    return uri


def povid_config(ground_truth: str, injector: str) -> str:
    return json.dumps(
        {
            "source": "llm",
            "ground_truth": ground_truth,
            "batch_size": 2,
            "injector": {"name": "scripted", "path": injector, "engine": "hf", "device": "cpu", "dtype": "float32"},
            "sampling": {"temperature": 0.0, "max_new_tokens": 24},
        }
    )


def test_llm_source_writes_validated_pairs_and_counts_every_drop(s3_server, bucket, tmp_path):
    root = join(bucket, "runs", "llm")
    ground_truth = write_run(root, tmp_path)
    injector = build_scripted_llm(str(tmp_path / "injector"), "answer: " + REWRITE)
    config = povid_config(ground_truth, injector)
    assert steps.povid_placement(config, "povid") == "cpu"  # an hf injector on the CPU holds no GPU

    made = steps.povid_step(root, config, "povid")
    artifact = Artifact.open(Storage(), outputref.plain(made), kind="pairs")
    assert outputref.plain(made) == join(root, steps.POVID_PAIRS)
    rows = [row for _, table in artifact.iter_shards() for row in table.to_pylist()]
    assert [(r["image_id"], r["kind"], r["prompt"], r["chosen"], r["rejected"]) for r in rows] == [
        ("coco%2Fc.jpg", "povid", QUESTION, "A cat sleeping near the window.", REWRITE)
    ]
    assert rows[0]["chosen_score"] is None and rows[0]["image_uri"].startswith(steps.artifact_uri(root, "ingest"))
    stats = artifact.manifest.stats
    counts = {key: value for key, value in stats.items() if key.startswith(("kept_", "dropped_"))}
    assert counts == {
        "kept_caption": 1,
        "dropped_identical": 1,
        "dropped_no_visible_change": 1,
        "dropped_no_answer": 0,
        "dropped_empty": 0,
    }
    asked = 4 - stats["images_without_ground_truth"]  # four images ingested, d.jpg without a record
    assert stats["images_without_ground_truth"] == 1 and sum(counts.values()) == asked == 3
    assert stats["povid_pairs"] == artifact.manifest.rows == 1
    # the step's kfp Metrics carry the same counters
    numbers = pairs_numbers(made)
    assert (numbers["rows"], numbers["dropped_identical"], numbers["kept_caption"]) == (1, 1, 1)
    assert steps.povid_step(root, config, "povid") == made  # a finished artifact is kept, not redone


def test_llm_replies_without_an_answer_are_dropped_by_name(s3_server, bucket, tmp_path):
    root = join(bucket, "runs", "refusing")
    ground_truth = write_run(root, tmp_path)
    injector = build_scripted_llm(str(tmp_path / "injector"), "i can not help with that .")
    made = steps.povid_step(root, povid_config(ground_truth, injector), "povid")
    artifact = Artifact.open(Storage(), outputref.plain(made), kind="pairs")
    stats = artifact.manifest.stats
    assert artifact.manifest.rows == 0 and stats["dropped_no_answer"] == 3
    assert sum(v for k, v in stats.items() if k.startswith(("kept_", "dropped_"))) == 3
