"""AMBER metrics against values worked out by hand on a tiny benchmark in the official layout.

The NLP resources (nltk data, spaCy vectors) are not available offline here, so the tests give
the scorer a fixed table of what the tokeniser/tagger/lemmatiser returns for each response and
which word pairs the vectors call similar; every count below is derived from the official
algorithm by hand in the comments.
"""

from __future__ import annotations

import json
import os

import pytest

from clipdpo.evaluate import amber

# The hand-made benchmark (relation words, annotations, metrics.txt) is conftest's `eval_set`, shared
# with the evaluate tests.
SAFE_WORDS = ["sky", "day"]


class TableNLP:
    description = "test table"

    def __init__(self, nouns: dict[str, list[str]], similar: set[tuple[str, str]]):
        self.table, self.similar = nouns, similar

    def nouns(self, text):
        return self.table[text]

    def similarity(self, a, b):
        return 1.0 if a == b or (a, b) in self.similar or (b, a) in self.similar else 0.1


R1 = "A puppy runs on the lawn under the sky with a kitten and a ball."
R2 = "A person stands next to a vehicle."
NLP = TableNLP(
    # R1 nouns: puppy (truth dog via association), lawn (truth grass), sky (global safe: skipped but counted),
    # kitten (hallu cat: covers Cog, and hallucinated), ball (not in AMBER's vocabulary: ignored)
    {
        R1: ["puppy", "lawn", "sky", "kitten", "ball"],
        # R2 nouns: person (hallu man via association; also similar to nothing safe -> hallucinated),
        # vehicle (truth car), car? no. "tree" never mentioned.
        R2: ["person", "vehicle"],
    },
    similar=set(),
)


@pytest.fixture
def bench(tmp_path, eval_set):
    root = tmp_path / "amber"
    root.mkdir()
    (root / "annotations.json").write_text(json.dumps(eval_set.amber_annotations))
    (root / "relation.json").write_text(json.dumps(eval_set.amber_relation))
    (root / "safe_words.txt").write_text("\n".join(SAFE_WORDS) + "\n")
    (root / "metrics.txt").write_text(eval_set.metrics_txt + "\n")
    return str(root)


RESPONSES = {1: R1, 2: R2, 3: "No", 4: "No", 5: "No", 6: "Yes", 7: "Yes", 8: "Yes", 9: "no"}


def test_generative_metrics_by_hand(bench):
    data = amber.load(bench)
    result = amber.evaluate(data, RESPONSES, NLP)
    gen = result["generative"]
    # vocabulary nouns: R1 4 (puppy, lawn, sky, kitten), R2 2 -> chair_num = 6 (+0.001 start)
    # hallucinated: R1 kitten; R2 person -> 2;  CHAIR = 2 / 6.001 = 33.33 -> 33.3
    assert gen["chair"] == round(2 / 6.001 * 100, 1) == 33.3
    # covered truth: R1 dog, grass (2 of 2); R2 car (1 of 2) -> 3 / 4.001 = 74.98 -> 75.0
    assert gen["cover"] == round(3 / 4.001 * 100, 1) == 75.0
    # both responses hallucinate -> Hal = 100 - 0 / 2.001 * 100 = 100.0
    assert gen["hal"] == 100.0
    # hallu words covered: R1 cat (via kitten) of {cat, frisbee}; R2 man (via person) of {man} -> 2 / 3.001
    assert gen["cog"] == round(2 / 3.001 * 100, 1) == 66.6
    assert result["examples"] == [] and result["complete"]
    # examples: the first generative items by id, hallucinated or not (every model shows the same ones)
    first = amber.evaluate(data, RESPONSES, NLP, options=amber.EvaluateOptions(examples=1))["examples"]
    assert first == [{"id": 1, "response": R1, "hallucinated": ["kitten"]}]
    assert [
        e["id"] for e in amber.evaluate(data, RESPONSES, NLP, options=amber.EvaluateOptions(examples=5))["examples"]
    ] == [1, 2]


def test_similarity_rescues_a_safe_noun_and_global_safe_words_count(bench):
    data = amber.load(bench)
    nlp = TableNLP(
        {R1: ["puppy", "lawn", "sky", "kitten", "ball"], R2: ["person", "vehicle"]}, similar={("person", "car")}
    )  # vectors call person ~ car: covered, not hallucinated
    gen = amber.evaluate(data, RESPONSES, nlp)["generative"]
    # R2: person matches hallu man (Cog still counts) but is similar to car -> not hallucinated
    assert gen["chair"] == round(1 / 6.001 * 100, 1) == 16.7
    assert gen["hal"] == round(100 - 1 / 2.001 * 100, 1) == 50.0
    assert gen["cog"] == 66.6


def test_discriminative_no_is_the_positive_class(bench):
    result = amber.evaluate(amber.load(bench), RESPONSES, NLP)
    # truths:  3 no, 4 yes, 5 no, 6 yes, 7 no, 8 yes, 9 no
    # answers: No, No, No, Yes, Yes, Yes, "no" (not exactly "No": counts as neither)
    # correct: 3, 5, 6, 8 -> 4 / 7.001 = 57.1
    # answered "No": 3, 4, 5 -> of which truth no: 3, 5 -> precision 2 / 3.001 = 66.6
    # truth no: 3, 5, 7, 9 -> answered "No": 3, 5 -> recall 2 / 4.001 = 50.0
    d = result["discriminative"]
    assert (d["accuracy"], d["precision"], d["recall"]) == (57.1, 66.6, 50.0)
    assert d["f1"] == round(2 * 0.666 * 0.5 / (0.666 + 0.5 + 0.0001) * 100, 1) == 57.1
    # existence (3, 4): correct 1 of 2 -> 50.0; answered No 2, truth no 1 -> 50.0; truth no 1 -> 100.0
    e = result["existence"]
    assert (e["accuracy"], e["precision"], e["recall"]) == (round(1 / 2.001 * 100, 1), 50.0, round(1 / 1.001 * 100, 1))
    assert e["f1"] == round(2 * 0.5 * 0.999 / (0.5 + 0.999 + 0.001) * 100, 1)  # the official +0.001 here
    # relation (8 yes -> Yes correct; 9 no -> "no" wrong): accuracy 50.0, nobody answered "No" -> P = 0
    r = result["relation"]
    assert r["accuracy"] == 50.0 and r["precision"] == 0.0 and r["recall"] == 0.0 and r["f1"] == 0.0
    # attribute pools state/number/action: 5 no->No ok, 6 yes->Yes ok, 7 no->Yes wrong: 2 / 3.003
    assert result["attribute"]["accuracy"] == round(2 / 3.003 * 100, 1)
    assert result["amber_score"] == round((100 - 33.3 + 57.1) / 2, 2)


def test_amber_score_matches_the_paper():
    assert amber.amber_score(7.8, 74.7) == pytest.approx(83.45)  # LLaVA-1.5 7B in Table 2: 83.5


def test_bad_inputs_are_named(bench, tmp_path, eval_set):
    annotations = eval_set.amber_annotations
    data = amber.load(bench)
    with pytest.raises(amber.AmberInputError, match=r"no response \(e.g. \[2\]\)"):
        amber.evaluate(data, {k: v for k, v in RESPONSES.items() if k != 2}, NLP)
    partial = amber.evaluate(
        data, {k: v for k, v in RESPONSES.items() if k != 2}, NLP, options=amber.EvaluateOptions(allow_partial=True)
    )
    assert partial["complete"] is False and partial["missing_ids"] == [2]
    with pytest.raises(amber.AmberInputError, match="ids not in annotations"):
        amber.evaluate(data, {**RESPONSES, 99: "Yes"}, NLP)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "annotations.json").write_text(json.dumps({"1": annotations[0]}))
    (broken / "relation.json").write_text("{}")
    with pytest.raises(amber.AmberInputError, match="expected a list"):
        amber.load(str(broken))
    (broken / "annotations.json").write_text(json.dumps([{**annotations[0], "id": 5}]))
    (broken / "safe_words.txt").write_text("")
    (broken / "metrics.txt").write_text("chair_num=0.001\n")
    with pytest.raises(amber.AmberInputError, match="has id 5, expected 1"):
        amber.load(str(broken))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(amber.AmberInputError, match="annotations.json: missing"):
        amber.load(str(empty))


def test_the_official_files_load(tmp_path):
    root = "/work/shared/amber"
    if not os.path.isdir(root):
        pytest.fail("shared/amber is expected on these machines")
    data = amber.load(root)
    assert len(data.annotations) > 1000 and "dog" in data.hallucination_words
    assert data.counters["chair_num"] == 0.001
    # the metrics.txt the demo and the tests write is the official one, counter for counter
    assert amber.parse_counters(amber.start_counters_text(), "generated") == data.counters


R3 = "A dog on the grass."
R4 = "A car by a tree."


def test_generative_metrics_over_two_samples_per_item_by_hand(bench):
    """Sampled decoding: each item answered twice; every answer counts as one description."""
    nlp = TableNLP({**NLP.table, R3: ["dog", "grass"], R4: ["car", "tree"]}, similar=set())
    result = amber.evaluate(
        amber.load(bench), {**RESPONSES, 1: [R1, R3], 2: [R2, R4]}, nlp, options=amber.EvaluateOptions(examples=2)
    )
    gen = result["generative"]
    # nouns: R1 4, R3 2, R2 2, R4 2 -> 10; hallucinated: kitten (R1), person (R2) -> 2 / 10.001 = 20.0
    assert gen["chair"] == round(2 / 10.001 * 100, 1) == 20.0
    # truth covered: R1 2 of 2, R3 2 of 2, R2 1 of 2, R4 2 of 2 -> 7 / 8.001 = 87.49 -> 87.5
    assert gen["cover"] == round(7 / 8.001 * 100, 1) == 87.5
    # 4 descriptions, R3 and R4 free of hallucination -> Hal = 100 - 2 / 4.001 * 100 = 50.01 -> 50.0
    assert gen["hal"] == 50.0
    # hallu words: R1 cat of 2, R3 none of 2, R2 man of 1, R4 none of 1 -> 2 / 6.001 = 33.3
    assert gen["cog"] == round(2 / 6.001 * 100, 1) == 33.3
    # the discriminative half is untouched and the examples show each item's first sample
    assert result["discriminative"] == amber.evaluate(amber.load(bench), RESPONSES, NLP)["discriminative"]
    assert [(e["id"], e["response"]) for e in result["examples"]] == [(1, R1), (2, R2)]
    # one sample in a list is the greedy computation exactly
    single = amber.evaluate(amber.load(bench), {**RESPONSES, 1: [R1], 2: [R2]}, NLP)
    assert single["generative"] == amber.evaluate(amber.load(bench), RESPONSES, NLP)["generative"]
    with pytest.raises(amber.AmberInputError, match="item 1: expected a text or a non-empty list"):
        amber.evaluate(amber.load(bench), {**RESPONSES, 1: []}, NLP)
