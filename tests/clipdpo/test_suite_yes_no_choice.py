"""LLaVA-suite scorers on hand-worked cases, including the benchmarks' own parsing edge cases."""

from __future__ import annotations

import pytest

from clipdpo.evaluate.suite.mmbench import mmbench_circular
from clipdpo.evaluate.suite.mme import MMEItem, mme_answer, mme_scores
from clipdpo.evaluate.suite.pope import pope_answer, pope_metrics


@pytest.mark.parametrize(
    "text,expected",
    [
        ("Yes, there is a dog in the image.", "yes"),
        ("No, there is no dog.", "no"),
        ("There is not a dog in the image.", "no"),
        ("Yes. But no cat is visible.", "yes"),  # only the first sentence counts
        ("Nope", "yes"),  # not the word "no": LLaVA's parser calls it yes
        ("no", "no"),
        ("I see a dog, no cat", "no"),
    ],
)
def test_pope_parsing(text, expected):
    assert pope_answer(text) == expected


def test_pope_metrics_by_hand():
    labels = ["yes", "yes", "no", "no", "yes"]
    answers = ["Yes", "No, it is not.", "Yes there is", "No.", "yes"]
    m = pope_metrics(labels, answers)
    # predictions: yes, no, yes, no, yes -> TP 2 (1, 5), FN 1 (2), FP 1 (3), TN 1 (4)
    assert (m["tp"], m["fn"], m["fp"], m["tn"]) == (2, 1, 1, 1)
    assert m["accuracy"] == pytest.approx(3 / 5) and m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3) and m["f1"] == pytest.approx(2 / 3) and m["yes_ratio"] == 0.6
    with pytest.raises(ValueError, match="5 labels but 4 answers"):
        pope_metrics(labels, answers[:4])


@pytest.mark.parametrize(
    "text,expected",
    [
        ("Yes", "yes"),
        ("no", "no"),
        ("Yes, it is.", "yes"),
        ("No it isn't", "no"),
        ("The answer is yes", "other"),
        ("nope", "no"),
    ],
)
def test_mme_parsing(text, expected):
    assert mme_answer(text) == expected


def test_mme_acc_plus_needs_both_questions_of_an_image():
    items = [
        MMEItem("existence", "a.jpg", "Yes", "Yes"),
        MMEItem("existence", "a.jpg", "No", "No"),
        MMEItem("existence", "b.jpg", "Yes", "Yes"),
        MMEItem("existence", "b.jpg", "No", "Yes"),
        MMEItem("count", "c.jpg", "Yes", "yes"),
        MMEItem("count", "c.jpg", "No", "no"),
    ]
    scores = mme_scores(items)
    # existence: 3 of 4 answers right = 75; images with both right 1 of 2 = 50 -> 125
    assert scores["existence"] == {"acc": 75.0, "acc_plus": 50.0, "score": 125.0}
    assert scores["count"]["score"] == 200.0
    assert scores["perception"] == 325.0 and scores["perception_complete"] is False


def test_mmbench_circular_counts_a_question_only_if_every_rotation_is_right():
    records = [
        {"index": 7, "prediction": "A", "answer": "A"},
        {"index": 1_000_007, "prediction": "B", "answer": "B"},
        {"index": 8, "prediction": "C", "answer": "C"},
        {"index": 1_000_008, "prediction": "C", "answer": "D"},
        {"index": 9, "prediction": "b) the dog", "answer": "B"},
    ]
    m = mmbench_circular(records)
    # question 7 right in both rotations; 8 wrong in its second; 9 (one rotation) right
    assert m["questions"] == 3 and m["circular_accuracy"] == pytest.approx(2 / 3)
    assert m["vanilla_accuracy"] == pytest.approx(1.0)
