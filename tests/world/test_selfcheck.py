"""The world LLaVA's self-checks: the bars name what they miss, and the benchmarks they read tell a right
answerer from a damaged one (answers flipped, descriptions of another image)."""

from __future__ import annotations

import pytest

from clipdpo_world import benchmark, data, language, metrics, selfcheck


def _passing() -> dict:
    return {
        "pope": {"random": 86.0, "adversarial": 81.0},
        "pope_damaged": {"random": 14.0, "adversarial": 19.0},
        "amber_f1": 76.0,
        "amber_f1_damaged": 30.0,
        "sampled_chair": 14.0,
        "sampled_hal": 38.0,
        "damaged_chair": 60.0,
        "zero_shot": {"top1": 90.0, "per_class_top1": {"ball": 80.0, "cup": 100.0}, "damaged_top1": 12.0},
    }


def test_a_world_llava_that_meets_every_bar_passes():
    assert selfcheck.failures(_passing()) == []
    selfcheck.require(_passing())


@pytest.mark.parametrize(
    "change, named",
    [
        ({"pope": {"random": 79.0, "adversarial": 70.0}}, "POPE random accuracy 79.0 < 80.0"),
        ({"pope": {"random": 86.0, "adversarial": 84.0}}, "POPE adversarial only 2.0 points below random"),
        ({"amber_f1": 69.0}, "AMBER discriminative F1 69.0 < 70.0"),
        ({"sampled_chair": 9.0}, "sampled CHAIR 9.0 < 10.0"),
        ({"sampled_hal": 24.0}, "sampled Hal 24.0 < 25.0"),
        (
            {"zero_shot": {"top1": 90.0, "per_class_top1": {"ball": 0.0}, "damaged_top1": 12.0}},
            "classes at 0%: ['ball']",
        ),
        ({"zero_shot": {"top1": 69.0, "per_class_top1": {"ball": 9.0}, "damaged_top1": 12.0}}, "zero-shot top-1 69.0"),
        ({"amber_f1_damaged": 70.0}, "scores only 6.0 worse on AMBER F1"),
        ({"damaged_chair": 20.0}, "scores only 6.0 worse on CHAIR"),
    ],
)
def test_each_missed_bar_stops_the_build_by_name(change, named):
    from clipdpo_world.clip import WorldBuildError

    measured = {**_passing(), **change}
    assert any(named in line for line in selfcheck.failures(measured))
    with pytest.raises(WorldBuildError, match="world LVLM fails its self-checks"):
        selfcheck.require(measured)
    selfcheck.require(measured, selfcheck.Bars(enforced=False))  # recorded only


def test_the_benchmarks_tell_right_answers_from_flipped_ones_and_captions_from_another_images(tmp_path):
    scenes = data.scenes(3, "heldout", 40)
    benchmark.write(str(tmp_path / "bench"), scenes, seed=3)
    from clipdpo.evaluate.suite import questions

    truth = {}
    for row in benchmark.pope_rows(scenes, 3):  # asked as the evaluate stage asks (the suite's POPE prompt)
        asked = questions.prompt("pope", row, benchmark.config("")["suite"][0].get("instruction"))
        truth[(f"{row['image'][:-4]}", asked)] = "Yes" if row["answer"] == "yes" else "No"
    annotations, queries = benchmark.amber_files(scenes, 3)
    for item, query in zip(annotations, queries):
        if item["type"] != "generative":
            scene = scenes[int(query["image"].split("_")[1].split(".")[0]) - 1]
            truth[(scene.image_id, query["query"])] = "Yes" if item["truth"] == "yes" else "No"

    def right(images, questions):
        return [truth[(s.image_id, q)] for s, q in zip(images, questions)]

    def damaged(images, questions):
        return [selfcheck.flipped(a) for a in right(images, questions)]

    assert selfcheck.pope_accuracy(scenes, 3, right) == {"adversarial": 100.0, "random": 100.0}
    assert selfcheck.pope_accuracy(scenes, 3, damaged) == {"adversarial": 0.0, "random": 0.0}
    amber_root = str(tmp_path / "bench" / "AMBER" / "data")
    assert selfcheck.amber_f1(amber_root, scenes, 3, right) == 100.0
    assert selfcheck.amber_f1(amber_root, scenes, 3, damaged) == 0.0
    captions = [language.caption(s) for s in scenes]
    assert metrics.caption_metrics(scenes, captions).chair == 0.0
    assert metrics.caption_metrics(scenes, selfcheck.shifted(captions)).chair > 40.0
