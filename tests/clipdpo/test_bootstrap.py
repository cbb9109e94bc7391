"""Paired bootstrap intervals over benchmark images, checked against a slow reference loop that rebuilds every
resample as a list of duplicated items and runs the benchmark's own metric function on it, and against
distributions worked out by hand."""

from __future__ import annotations

import json

import numpy as np
import pytest

from clipdpo.evaluate import amber, bootstrap, report, zeroshot
from clipdpo.evaluate.data import Item
from clipdpo.evaluate.evaluation import MEASURES, effects
from clipdpo.evaluate.suite import pope
from clipdpo.evaluate.suite.scoring import pope_measure, pope_per_image
from clipdpo.evaluate.suite.scoring import score as score_benchmark


def zero_shot_counts(correct_by_image: list[list[int]]) -> bootstrap.PerImage:
    """Images with one or more classified items each (1 = right)."""
    return bootstrap.by_image(
        ((f"img{k}", {"correct": c, "images": 1}) for k, items in enumerate(correct_by_image) for c in items),
        ["correct", "images"],
    )


def test_resample_weights_draw_every_image_count_times_and_repeat_with_the_seed():
    weights = bootstrap.resample_weights(7, 50, seed=3)
    assert weights.shape == (50, 7) and (weights.sum(axis=1) == 7).all() and (weights >= 0).all()
    drawn = np.random.default_rng(3).integers(0, 7, size=(50, 7))  # the draw the weights count
    assert (weights == np.stack([np.bincount(row, minlength=7) for row in drawn])).all()
    assert (bootstrap.resample_weights(7, 50, seed=3) == weights).all()
    assert not (bootstrap.resample_weights(7, 50, seed=4) == weights).all()


def test_two_images_the_distribution_enumerated_by_hand():
    # base right on image 0 only, the model on both. A resample of 2 images is {0,0}: delta 100 - 100 = 0
    # (p 1/4); {0,1}: 100 - 50 = 50 (p 1/2); {1,1}: 100 - 0 = 100 (p 1/4). Percentiles 2.5 / 97.5: 0 and 100.
    base, model = zero_shot_counts([[1], [0]]), zero_shot_counts([[1], [1]])
    found = bootstrap.paired_effects(base, model, zeroshot.measure, resamples=4000, seed=0)["top1"]
    assert found["delta"] == 50.0 and found["ci95"] == [0.0, 100.0] and found["resamples"] == 4000
    assert found["images"] == 2
    weights = bootstrap.resample_weights(2, 4000, seed=0)
    share = {k: float(np.mean(weights[:, 1] == k)) for k in (0, 1, 2)}  # times image 1 drawn
    assert share[0] == pytest.approx(0.25, abs=0.03) and share[1] == pytest.approx(0.5, abs=0.03)


def test_identical_models_have_a_zero_interval():
    counts = zero_shot_counts([[1, 0], [0], [1, 1, 1], [0, 1]])
    found = bootstrap.paired_effects(counts, counts, zeroshot.measure, resamples=200, seed=1)
    assert found == {"top1": {"delta": 0.0, "ci95": [0.0, 0.0], "resamples": 200, "images": 4}}


def test_a_model_better_on_every_image_has_an_interval_above_zero():
    rng = np.random.default_rng(5)
    sizes = rng.integers(2, 6, size=40)
    base = [[1] + [0] * (n - 1) for n in sizes]  # one right per image
    better = [[1, 1] + [0] * (n - 2) for n in sizes]  # two right per image
    found = bootstrap.paired_effects(
        zero_shot_counts(base), zero_shot_counts(better), zeroshot.measure, resamples=500, seed=0
    )["top1"]
    assert 0 < found["ci95"][0] <= found["delta"] <= found["ci95"][1]
    # and the reverse comparison is entirely below zero, the mirror image
    reverse = bootstrap.paired_effects(
        zero_shot_counts(better), zero_shot_counts(base), zeroshot.measure, resamples=500, seed=0
    )["top1"]
    assert reverse["ci95"] == pytest.approx([-found["ci95"][1], -found["ci95"][0]])


def test_images_in_another_order_give_the_same_interval():
    base, model = zero_shot_counts([[1], [0], [0], [1]]), zero_shot_counts([[1], [1], [0], [0]])
    shuffled = model.aligned(["img3", "img1", "img0", "img2"])
    assert bootstrap.paired_effects(base, shuffled, zeroshot.measure, 300) == bootstrap.paired_effects(
        base, model, zeroshot.measure, 300
    )
    with pytest.raises(ValueError, match="different images"):
        bootstrap.paired_effects(base, zero_shot_counts([[1], [0], [0]]), zeroshot.measure, 10)


# ---- AMBER: each resample's numbers are amber.evaluate's on the resample's items, duplicated as drawn ----


class TableNLP:
    description = "test table"

    def __init__(self, nouns: dict[str, list[str]]):
        self.table = nouns

    def nouns(self, text):
        return self.table[text]

    def similarity(self, a, b):
        return 1.0 if a == b else 0.1


RELATION = {"dog": ["puppy"], "cat": ["kitten"], "car": [], "tree": [], "man": [], "grass": [], "sky": []}
TEXTS = {
    "d0": ["dog", "grass"],
    "d1": ["dog", "cat"],
    "d2": ["car", "man", "sky"],
    "d3": ["tree"],
    "d4": ["puppy", "kitten", "man"],
    "d5": ["grass", "sky"],
}
NLP = TableNLP(TEXTS)


def amber_bench(images: int, seed: int) -> tuple[list[dict], dict[str, dict[int, object]], dict[int, str]]:
    """Per image one generative item (truth dog/grass or car/tree) and three yes/no items; two models' replies
    (two sampled descriptions per generative item), drawn at random."""
    rng = np.random.default_rng(seed)
    items, image_of = [], {}
    replies: dict[str, dict[int, object]] = {"base": {}, "trained": {}}
    for k in range(images):
        truth = [["dog", "grass"], ["car", "tree"]][k % 2]
        items.append({"type": "generative", "truth": truth, "hallu": ["cat", "man"]})
        for kind in ("discriminative-hallucination", "discriminative-attribute-state", "discriminative-relation"):
            items.append({"type": kind, "truth": str(rng.choice(["yes", "no"]))})
        for position in range(len(items) - 4, len(items)):
            image_of[position + 1] = f"img{k}"
    for model in replies:
        for position, item in enumerate(items, 1):
            if item["type"] == "generative":
                replies[model][position] = [str(rng.choice(list(TEXTS))) for _ in range(2)]
            else:
                replies[model][position] = str(rng.choice(["Yes", "No"]))
    return items, replies, image_of


def data_of(items: list[dict]) -> amber.AmberData:
    annotations = [{"id": position, **item} for position, item in enumerate(items, 1)]
    counters = amber.parse_counters(amber.start_counters_text(), "metrics.txt")
    return amber.AmberData(annotations, RELATION, ["sky"], counters)


def amber_per_image(items, replies, image_of) -> bootstrap.PerImage:
    data = data_of(items)
    per_item = amber.evaluate(data, replies, NLP, options=amber.EvaluateOptions(per_item=True))["per_item"]
    return bootstrap.by_image(
        ((image_of[i], c) for i, c in sorted(per_item.items())),
        list(amber.HEADLINE_COUNTERS),
        {k: data.counters[k] for k in amber.HEADLINE_COUNTERS},
    )


def reference_amber_deltas(items, replies, image_of, resamples: int, seed: int) -> dict[str, list[float]]:
    """The slow way: per resample, the drawn images' items copied as often as drawn, renumbered, scored afresh."""
    images = list(dict.fromkeys(image_of.values()))
    drawn = np.random.default_rng(seed).integers(0, len(images), size=(resamples, len(images)))
    deltas: dict[str, list[float]] = {}
    for row in drawn:
        copied, answers = [], {"base": {}, "trained": {}}
        for index in row:
            for position, image in image_of.items():
                if image == images[index]:
                    copied.append(items[position - 1])
                    for model in answers:
                        answers[model][len(copied)] = replies[model][position]
        scored = {m: amber.evaluate(data_of(copied), answers[m], NLP) for m in answers}
        for name, path in (
            ("generative.chair", ("generative", "chair")),
            ("generative.hal", ("generative", "hal")),
            ("generative.cover", ("generative", "cover")),
            ("discriminative.f1", ("discriminative", "f1")),
            ("amber_score", ("amber_score",)),
        ):
            values = [scored[m] for m in ("trained", "base")]
            for key in path:
                values = [v[key] for v in values]
            deltas.setdefault(name, []).append(values[0] - values[1])
    return deltas


def test_amber_resamples_equal_the_metric_function_on_the_duplicated_items():
    items, replies, image_of = amber_bench(images=6, seed=0)
    base, trained = (amber_per_image(items, replies[m], image_of) for m in ("base", "trained"))
    # the full set: exactly amber.evaluate's numbers
    full = {m: amber.evaluate(data_of(items), replies[m], NLP) for m in ("base", "trained")}
    whole = np.ones((1, 6))
    assert amber.headline(base.totals(whole)[0])["amber_score"] == full["base"]["amber_score"]
    assert amber.headline(trained.totals(whole)[0])["generative.chair"] == full["trained"]["generative"]["chair"]
    # every resample: the numbers of the items duplicated as drawn
    weights = bootstrap.resample_weights(6, 40, seed=2)
    reference = reference_amber_deltas(items, replies, image_of, 40, seed=2)
    fast = [
        amber.headline(t)["amber_score"] - amber.headline(b)["amber_score"]
        for t, b in zip(trained.totals(weights), base.totals(weights))
    ]
    assert fast == reference["amber_score"]
    # and the interval is the percentiles of those deltas
    found = bootstrap.paired_effects(base, trained, amber.headline, resamples=40, seed=2)
    for name, deltas in reference.items():
        assert found[name]["ci95"] == pytest.approx(list(np.percentile(deltas, [2.5, 97.5])), abs=1e-9), name
    assert found["amber_score"]["delta"] == pytest.approx(full["trained"]["amber_score"] - full["base"]["amber_score"])


# ---- POPE: per split confusion matrices per image ----


def pope_items(images: int, seed: int) -> tuple[list[Item], dict[str, dict[str, str]]]:
    rng = np.random.default_rng(seed)
    items, replies = [], {"base": {}, "trained": {}}
    for k in range(images):
        for split in ("adversarial", "random"):
            for q in range(2):
                item_id = f"{k}-{split}-{q}"
                items.append(
                    Item(
                        item_id,
                        f"img{k}.jpg",
                        "Is there a dog?",
                        {"category": split, "answer": ["yes", "no"][q], "image": f"img{k}.jpg"},
                    )
                )
                for model in replies:
                    replies[model][item_id] = str(rng.choice(["Yes, there is.", "No, there is not."]))
    return items, replies


def test_pope_resamples_equal_the_metric_function_on_the_duplicated_items():
    items, replies = pope_items(images=5, seed=1)
    counts = {m: pope_per_image(items, replies[m]) for m in replies}
    for m in replies:  # on the full set: the suite's own numbers
        scored = score_benchmark("pope", items, replies[m])
        measured = pope_measure(counts[m].totals(np.ones((1, 5)))[0])
        assert measured == {"headline": scored["headline"], "accuracy_mean": scored["accuracy_mean"]}
    weights = bootstrap.resample_weights(5, 30, seed=0)
    drawn = np.random.default_rng(0).integers(0, 5, size=(30, 5))
    for row, b, t in zip(drawn, counts["base"].totals(weights), counts["trained"].totals(weights)):
        copied = [
            Item(f"{n}:{it.id}", it.image, it.prompt, it.fields)
            for n, k in enumerate(row)
            for it in items
            if it.image == f"img{k}.jpg"
        ]
        for m, totals in (("base", b), ("trained", t)):
            answers = {it.id: replies[m][it.id.split(":", 1)[1]] for it in copied}
            scored = score_benchmark("pope", copied, answers)
            assert pope_measure(totals)["headline"] == pytest.approx(scored["headline"], abs=1e-12)
            assert pope_measure(totals)["accuracy_mean"] == pytest.approx(scored["accuracy_mean"], abs=1e-12)


def test_pope_counts_give_the_known_metrics():
    # 3 yes-questions answered yes, yes, no; 2 no-questions answered yes, no: tp 2, fn 1, fp 1, tn 1
    found = pope.pope_metrics(["yes", "yes", "yes", "no", "no"], ["Yes", "Yes.", "No", "yes", "No, not"])
    assert (found["tp"], found["fn"], found["fp"], found["tn"]) == (2, 1, 1, 1)
    assert found["accuracy"] == 3 / 5 and found["f1"] == pytest.approx(2 / 3) and found["yes_ratio"] == 3 / 5


# ---- metrics.json and the report ----


def test_effects_reach_metrics_and_the_report():
    base, model = zero_shot_counts([[1], [0], [1], [0]]), zero_shot_counts([[1], [1], [1], [1]])
    per_image = {
        "base": {"zero_shot.toys": {"measure": "zero_shot", **base.to_json()}},
        "trained": {"zero_shot.toys": {"measure": "zero_shot", **json.loads(json.dumps(model.to_json()))}},
    }
    found = effects(per_image, "base", resamples=100, seed=0)
    assert set(found) == {"trained"} and found["trained"]["zero_shot.toys.top1"]["delta"] == 50.0
    lo, hi = found["trained"]["zero_shot.toys.top1"]["ci95"]
    assert 0 <= lo <= 50 <= hi <= 100
    assert set(MEASURES) == {"amber", "zero_shot", "pope"}
    # a metric a model's results do not hold (say the dataset was not scored for it) gets no effect
    results = {"base": {"zero_shot": {"toys": {"top1": 50.0}}}, "trained": {"zero_shot": {"toys": {}}}}
    assert effects(per_image, "base", 100, 0, results) == {"trained": {}}
    results["trained"]["zero_shot"]["toys"]["top1"] = 100.0
    assert effects(per_image, "base", 100, 0, results) == found
    # models scored on different images (partial runs) have no paired interval, and the evaluation goes on
    fewer = {
        **per_image,
        "trained": {"zero_shot.toys": {"measure": "zero_shot", **zero_shot_counts([[1], [1]]).to_json()}},
    }
    assert effects(fewer, "base", 100, 0) == {"trained": {}}
    metrics = {
        "complete": True,
        "baseline": "base",
        "models": [{"name": "base"}, {"name": "trained"}],
        "results": {
            "base": {"zero_shot": {"toys": {"top1": 50.0}}},
            "trained": {"zero_shot": {"toys": {"top1": 100.0}}},
        },
        "effects": found,
        "resources": {
            "cpu": {
                "cpu_model": "Test CPU",
                "cpus": 2,
                "environment": {"ATEN_CPU_CAPABILITY": "avx2"},
                "torch": {"cpu_capability": "AVX2", "intra_op_threads": 1},
                "mkl_branch": "AUTO (MKL_CBWR=AVX2 is honoured on Intel CPUs only; this CPU: AuthenticAMD)",
            }
        },
    }
    text = report.markdown(metrics)
    assert f"+50.0 [{lo:+.1f}, {hi:+.1f}]" in text and "100 resamples" in text
    assert f"+50.0 [{lo:+.1f}, {hi:+.1f}]" in report.html(metrics)
    assert "Scored on: Test CPU (2 CPUs); torch AVX2 kernels, 1 thread(s); pins: ATEN_CPU_CAPABILITY=avx2" in text
    assert "; MKL branch AUTO (MKL_CBWR=AVX2 is honoured on Intel CPUs only; this CPU: AuthenticAMD)" in text
