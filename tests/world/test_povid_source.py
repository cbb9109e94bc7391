"""POVID's pairs source: the world's rule-based injector, the shared validation, the pairs artifact,
the union for `both`, and the method reaching train through the pipeline's step functions."""

from __future__ import annotations

import json

import numpy as np
import pytest

from clipdpo import outputref, steps
from clipdpo.artifacts import Artifact
from clipdpo.storage import Storage, join
from clipdpo_world import language
from clipdpo_world.povid_source import WorldRewriter, inject, rewrite, scene_from_truth, visible
from clipdpo_world.scene import ObjectGroup, Scene

CUP_LEFT = Scene("s-1", "plain", (ObjectGroup("cup", "white", 1, 0),), 0)  # partner book absent
FULL = Scene(
    "s-2",
    "field",
    (ObjectGroup("cup", "white", 1, 0), ObjectGroup("book", "blue", 2, 1), ObjectGroup("man", "black", 1, 2)),
    0,
)  # no absent partner, every slot taken


def test_each_injection_changes_what_the_scorer_sees_in_the_expected_way():
    rng = np.random.default_rng(0)
    assert language.caption(CUP_LEFT) == "a picture of a white cup on the left."
    partner = inject(CUP_LEFT, "partner", rng)
    assert "book" in partner and partner.startswith("a picture of a white cup on the left")
    assert inject(CUP_LEFT, "colour", rng) == "a picture of a yellow cup on the left."  # cup's other colour
    moved = inject(CUP_LEFT, "position", rng)
    assert moved in ("a picture of a white cup in the middle.", "a picture of a white cup on the right.")
    swapped = inject(FULL, "position", rng)  # no free slot: two groups swap
    assert sorted(visible(swapped)) != sorted(visible(language.caption(FULL)))
    assert {g[2] for g in visible(swapped)} == {"cup", "books", "man"}
    # no absent partner: the rewrite is the original, which the validation drops
    assert inject(FULL, "partner", rng) == language.caption(FULL)
    assert inject(CUP_LEFT, "count", rng) == "a picture of two white cups on the left."
    with pytest.raises(ValueError, match="injection kind"):
        inject(CUP_LEFT, "shape", rng)


def test_a_rewrite_names_the_absent_partner_and_makes_one_more_error():
    errors_seen = set()
    for seed in range(30):
        errors, text = rewrite(CUP_LEFT, np.random.default_rng(seed))
        groups = visible(text)
        assert errors.startswith("partner_and_") and "book" in {g[2].rstrip("s") for g in groups}
        cup = [g for g in groups if g[2] in ("cup", "cups")]
        assert len(cup) == 1 and cup[0] != ("a", "white", "cup", "on the left")  # the cup itself changed too
        errors_seen.add(errors)
        errors, text = rewrite(FULL, np.random.default_rng(seed))  # no absent partner: one error only
        assert "_and_" not in errors and visible(text) != visible(language.caption(FULL))
        assert {g[2] for g in visible(text)} <= {"cup", "cups", "book", "books", "man", "men"}
    assert errors_seen == {"partner_and_count", "partner_and_position", "partner_and_colour"}


def test_visible_reads_the_groups_of_a_world_caption():
    assert visible("a field with two blue books in the middle and a white cup.") == {
        ("two", "blue", "books", "in the middle"),
        ("a", "white", "cup", ""),
    }


def write_world_images(tmp_path, n: int = 12):
    from clipdpo import ingest
    from clipdpo_world.data import scenes, write_folder

    folder = write_folder(str(tmp_path / "pool"), scenes(7, "pool", n))
    images = str(tmp_path / "run" / "images")
    ingest.run(ingest.IngestConfig(shard_size=5), folder, images)
    return folder, images


def test_source_writes_validated_pairs_and_counts_the_drops(tmp_path):
    from clipdpo.generate import povid_source

    folder, images = write_world_images(tmp_path)
    output = str(tmp_path / "run" / "povid-pairs")
    cfg = povid_source.PovidSourceConfig(
        source="plugin", rewriter="clipdpo_world.povid_source:rewriter", ground_truth=folder, seed=3
    )
    stats = povid_source.run(cfg, images, output)
    artifact = Artifact.open(Storage(), output, kind="pairs")
    rows = [row for _, table in artifact.iter_shards() for row in table.to_pylist()]
    truth = WorldRewriter(folder).truth
    # every rewrite changes a present group, so nothing is dropped; the partner comes with it wherever absent
    assert len(rows) == len(truth) == stats["povid_pairs"]
    assert stats["dropped_identical"] == 0 and stats["dropped_no_visible_change"] == 0
    assert sum(v for k, v in stats.items() if k.startswith("kept_")) == len(rows)
    with_partner = sum(bool(scene_from_truth(row).absent_partners) for row in truth.values())
    assert sum(v for k, v in stats.items() if k.startswith("kept_partner_and_")) == with_partner
    for row in rows:
        scene = scene_from_truth(truth[row["image_id"].removesuffix(".png")])
        assert row["kind"] == "povid" and row["chosen"] == language.caption(scene)  # ground truth preferred
        assert visible(row["rejected"]) != visible(row["chosen"])
        assert row["prompt"] in language.CAPTION_PROMPTS and row["image_uri"].startswith(images)
    again = povid_source.run(cfg, images, output)  # idempotent: the finished artifact is kept
    assert again == stats
    with pytest.raises(ValueError, match="ground_truth"):
        povid_source.PovidSourceConfig(source="plugin", rewriter="m:f")
    with pytest.raises(ValueError, match="rewriter"):
        povid_source.PovidSourceConfig(source="plugin", ground_truth=folder)
    with pytest.raises(ValueError, match="cannot load"):
        povid_source.make_rewriter(
            povid_source.PovidSourceConfig(source="plugin", rewriter="no_such_module:f", ground_truth=folder)
        )
    with pytest.raises(ValueError, match="source"):
        povid_source.PovidSourceConfig(source="gpt4v", ground_truth=folder)


def test_llava_conversation_json_gives_question_and_answer_per_image():
    from clipdpo.generate.povid_source import content_words, read_llava_json

    text = json.dumps(
        [
            {
                "id": "1",
                "image": "coco/a.jpg",
                "conversations": [
                    {"from": "human", "value": "<image>\nDescribe the image."},
                    {"from": "gpt", "value": "A dog on grass."},
                    {"from": "human", "value": "Colour?"},
                    {"from": "gpt", "value": "Brown."},
                ],
            },
            {
                "id": "2",
                "image": "coco/a.jpg",
                "conversations": [
                    {"from": "human", "value": "Other?"},
                    {"from": "gpt", "value": "Later record, same image."},
                ],
            },
            {"id": "3", "conversations": [{"from": "human", "value": "no image"}, {"from": "gpt", "value": "x"}]},
        ]
    )
    assert read_llava_json(text, "gt.json") == {"coco%2Fa.jpg": ("Describe the image.", "A dog on grass.")}
    with pytest.raises(ValueError, match="gt.json: record 0"):
        read_llava_json(
            json.dumps([{"id": "9", "image": "b.jpg", "conversations": [{"from": "gpt", "value": "x"}]}]), "gt.json"
        )
    assert content_words("The dog is on the grass.") == content_words("A dog on grass")  # no visible change


def train_config(model: str, method: str) -> str:
    values = dict(
        model=model,
        method=method,
        learning_rate=1e-3,
        global_batch_size=4,
        per_device_batch_size=4,
        max_length=96,
        warmup_ratio=0.0,
        save_steps=100,
        seed=1,
        max_steps=2,
    )
    if method != "clipdpo":
        values.update(reference="model", povid={"stage1_epochs": 1, "stage2_epochs": 1})
    return json.dumps(values)


def test_the_method_chooses_the_pairs_and_reaches_train(tmp_path):
    """Through the pipeline's step functions on world images: clipdpo makes no POVID pairs; povid trains on
    POVID's pairs with the two-stage objective; both trains on the union of the filter's pairs and POVID's."""
    from clipdpo.demo.models import build_tiny_llava
    from clipdpo.filter.combine import combine_pairs

    folder, images = write_world_images(tmp_path, n=8)
    model = build_tiny_llava(str(tmp_path / "tiny-llava"))
    root = str(tmp_path / "run")
    povid_json = json.dumps(
        {"source": "plugin", "rewriter": "clipdpo_world.povid_source:rewriter", "ground_truth": folder}
    )
    assert steps.povid_step(root, povid_json, "clipdpo") == ""
    # clipdpo: the filter's pairs (none made in this test: the bare URI, no version)
    assert steps.training_pairs_step(root, "clipdpo") == steps.artifact_uri(root, "filter")

    povid = steps.povid_step(root, povid_json, "povid")
    single = Artifact.open(Storage(), join(root, steps.POVID_PAIRS), kind="pairs")
    assert povid == f"{join(root, steps.POVID_PAIRS)}#{single.manifest.fingerprint[:16]}"  # versioned (outputref)
    pairs = steps.training_pairs_step(root, "povid")
    assert pairs == povid
    output = outputref.plain(steps.train_step(root, train_config(model, "povid"), launcher="local", pairs_uri=pairs))
    summary = json.loads(Storage().read_bytes(join(output, "train_summary.json")))
    assert summary["pairs"] == outputref.plain(povid) and summary["config"]["method"] == "povid"
    assert "povid_rank0" in summary

    # both: the filter's pairs (here: a second copy of POVID's stands in for them) plus POVID's, in one artifact
    clipdpo_pairs = combine_pairs({"copy": outputref.plain(povid)}, str(tmp_path / "clip-pairs"))
    union = outputref.plain(steps.training_pairs_step(root, "both", clipdpo_pairs, povid))
    assert union == join(root, steps.BOTH_PAIRS)
    combined = Artifact.open(Storage(), union, kind="pairs")
    assert combined.manifest.rows == 2 * single.manifest.rows
    assert sorted(combined.shard_names) == sorted(
        [f"clipdpo-copy-{n}" for n in single.shard_names] + [f"povid-{n}" for n in single.shard_names]
    )


def test_an_arm_after_the_pipeline_trains_with_the_runs_train_overrides(tmp_path):
    """clipdpo_lab.arms.train_method_arm (what `--arms povid` runs after the pipeline), with the run's
    `--set train.*` items: the arm's POVID pairs and real training take them on top of POVID's settings."""
    from clipdpo.demo.models import build_tiny_llava
    from clipdpo_lab.arms import TRAIN_OVERRIDES, arm_root, train_method_arm

    folder, _ = write_world_images(tmp_path, n=8)
    model = build_tiny_llava(str(tmp_path / "tiny-llava"))
    root = str(tmp_path / "run")  # the pipeline's run root: its images artifact is what write_world_images made
    configs = {
        "world_train": json.loads(train_config(model, "clipdpo")),
        "povid": {"source": "plugin", "rewriter": "clipdpo_world.povid_source:rewriter", "ground_truth": folder},
        TRAIN_OVERRIDES: ["train.povid.stage1_epochs=1", "train.learning_rate=0.002", "train.max_steps=2"],
    }
    output = outputref.plain(train_method_arm(configs, "povid", root, say=lambda line: None))
    assert output == steps.artifact_uri(arm_root(root, "povid"), "train")
    trained = json.loads(Storage().read_bytes(join(output, "train_summary.json")))["config"]
    # the overrides win over POVID's world settings (stage 1: 3 epochs, lr 1e-5); the rest is POVID's
    assert (trained["povid"]["stage1_epochs"], trained["learning_rate"], trained["max_steps"]) == (1, 0.002, 2)
    assert (trained["method"], trained["povid"]["noise_step"], trained["povid"]["stage2_epochs"]) == ("povid", 500, 1)
