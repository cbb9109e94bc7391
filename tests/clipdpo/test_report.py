"""The evaluation report: deltas, their direction, the paper's suite average, incompleteness, marked words."""

from __future__ import annotations

import pytest

from clipdpo.evaluate import report


def _metrics(complete=True):
    def amber(chair, f1):
        return {
            "complete": complete,
            "generative": {"chair": chair, "cover": 50.0, "hal": 30.0, "cog": 2.0},
            "discriminative": {"accuracy": 70.0, "precision": 80.0, "recall": 60.0, "f1": f1},
            "amber_score": (100 - chair + f1) / 2,
            "examples": [{"id": 1, "response": "A dog and two cats <b>on</b> grass.", "hallucinated": ["cat"]}],
        }

    suite = {"gqa": {"kind": "gqa", "headline": 62.0}, "mme": {"kind": "mme", "headline": 1510.7}}
    return {
        "complete": complete,
        "baseline": "base",
        "models": [{"name": "base"}, {"name": "dpo"}],
        "results": {
            "base": {"amber": amber(7.8, 74.7), "suite": suite},
            "dpo": {"amber": amber(3.7, 82.9), "suite": {**suite, "gqa": {"kind": "gqa", "headline": 59.3}}},
        },
        "resources": {"amber_nlp": "test NLP"},
    }


def test_tables_deltas_and_directions():
    tables = {t.title.split(" (")[0].split(":")[0]: t for t in report.build_tables(_metrics())}
    amber = tables["AMBER"]
    ((label, deltas),) = amber.deltas()
    assert label == "Δ dpo" and deltas[0] == pytest.approx(-4.1) and deltas[7] == pytest.approx(8.2)
    assert report.better("CHAIR ↓", -4.1) is True and report.better("F1", 8.2) is True
    assert report.better("F1", -1.0) is False and report.better("Hal ↓", 2.0) is False
    assert report.better("F1", 0.01) is None
    # the paper's Table 4 average counts MME /20: LLaVA-1.5 (62.0, 1510.7) -> (62.0 + 75.535) / 2
    suite = tables["LLaVA benchmark suite"]
    assert suite.columns == ["GQA", "MME-P", "Avg"] and suite.rows[0][1][2] == pytest.approx(68.7675)


def test_markdown_and_html():
    md = report.markdown(_metrics())
    assert "| base | 7.8 | 50.0 | 30.0 | 2.0 | 70.0 | 80.0 | 60.0 | 74.7 | 83.5 |" in md  # Table 2's LLaVA-1.5 row
    assert "| Δ dpo | 🟢 -4.1 |" in md and "🔴 -2.7" in md  # GQA fell
    assert "two **cats**" in md and "test NLP" in md and "INCOMPLETE" not in md
    page = report.html(_metrics())
    assert "<td class='better'>-4.1</td>" in page and "<td class='worse'>-2.7</td>" in page
    assert "<mark>cats</mark>" in page and "&lt;b&gt;on&lt;/b&gt;" in page  # responses are escaped


def test_incomplete_results_are_flagged():
    md = report.markdown(_metrics(complete=False))
    assert "INCOMPLETE RESULTS" in md and "INCOMPLETE: scored on part of the items for base, dpo" in md
    assert "INCOMPLETE RESULTS" in report.html(_metrics(complete=False))


def test_spacy_nouns_and_vectors(spacy_nlp):
    nlp = spacy_nlp
    assert nlp.nouns("Two dogs are playing on the grass near a red car.") == ["dog", "grass", "car"]
    # WordNet lemmatizes lower-case forms only; a capitalised plural stays as written, as officially
    assert nlp.nouns("Dogs are chasing two bicycles.") == ["Dogs", "bicycle"]
    assert nlp.nouns_many(["A cat.", "Two cats."]) == [["cat"], ["cat"]]
    assert nlp.similarity("dog", "dog") == pytest.approx(1.0) and nlp.similarity("dog", "car") < 0.8
    assert "en_core_web_md" in nlp.description
