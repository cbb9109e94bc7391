"""The run report from a finished run's artifacts: what it gathers (worked out by hand from report_fixture),
and that report.html is one self-contained page holding every figure and example, with the words marked."""

from __future__ import annotations

import base64
import io
import json
import re

import numpy as np
import pytest
import report_fixture as fx
from PIL import Image

from clipdpo.report import build as report
from clipdpo.report.gather import by_category, gather
from clipdpo.report.render import split_headline
from clipdpo.storage import Storage

FIGURES = ["amber", "caption_lengths", "clip_scores", "filter_funnel", "training_curves"]


@pytest.fixture
def run_root(tmp_path) -> str:
    return fx.write_run(str(tmp_path / "run"))


def test_gather_reads_each_stage(run_root):
    run = gather(run_root, Storage())
    assert run.stage_rows == {"score": 9, "filter": 4}  # 8 captions + 1 qa row; 3 caption pairs + 1 qa pair
    # widest caption margin per image: img0 30-26, img1 31-29.5, img3 33-27; img2 has one caption
    assert sorted(run.widest_margins) == pytest.approx([1.5, 4.0, 6.0])
    assert run.margin_threshold == 1.0 and run.funnel == {**fx.FUNNEL, "seconds": 0.5}
    assert run.pairs.chosen_score == [30.0, 31.0, 33.0] and run.pairs.margin == [4.0, 1.5, 6.0]  # qa pair left out
    assert run.pairs.chosen_words == [8, 2, 8] and run.pairs.rejected_words == [2, 7, 2]
    assert by_category(run.pairs) == {"people": ([30.0, 33.0], [26.0, 27.0]), "objects": ([31.0], [29.5])}
    assert run.beta == 0.1 and [r["step"] for r in run.train_rows] == [1, 2, 3, 4]


def test_gather_of_an_empty_run_root_is_empty(tmp_path):
    run = gather(str(tmp_path / "nothing"), Storage())
    assert (run.stage_rows, run.train_rows, run.funnel, run.evaluation) == ({}, [], {}, None)
    built, files = report.build(str(tmp_path / "nothing"), Storage())
    assert "<img" not in built.html and sorted(files) == ["headline.json", "report.html", "report.md"]


def _images(page: str) -> list[tuple[str, str]]:
    return re.findall(r"<img [^>]*alt='([^']*)' src='([^']*)'", page)


def test_report_is_self_contained_with_every_figure_and_example(reported_run):
    run_root, written = reported_run.root, reported_run.written
    folder = f"{run_root}/report"
    assert written.files == sorted(["report.html", "report.md", "headline.json"] + [f"{n}.png" for n in FIGURES])
    page = open(f"{folder}/report.html").read()
    assert page == written.html
    images = _images(page)
    assert page.count("<img") == len(images) == len(FIGURES) + 2  # five figures, two example thumbnails
    assert sorted(alt for alt, _ in images if not alt.startswith("AMBER")) == FIGURES
    for alt, src in images:
        mime, data = re.fullmatch(r"data:(image/(?:png|jpeg));base64,(.+)", src).groups()
        image = Image.open(io.BytesIO(base64.b64decode(data)))
        image.load()
        assert image.format == {"image/png": "PNG", "image/jpeg": "JPEG"}[mime]
        if alt in FIGURES:  # the inlined figure is the PNG saved beside the report
            assert base64.b64decode(data) == open(f"{folder}/{alt}.png", "rb").read()
    assert Image.open(io.BytesIO(base64.b64decode(dict(images)["AMBER 2"].split(",")[1]))).size == (224, 149)
    # no reference leaves the file except the links to the PNG copies beside it
    assert not re.search(r"(src|href)='(?!data:)(?![a-z_]+\.png')", page)
    # each model's description, hallucinated words marked: base's 'cat' on item 1, nothing for clip-dpo's
    assert "A dog and a <mark>cat</mark> on the grass." in page
    assert "A dog on the grass.<br><small>hallucinated: none</small>" in page
    assert page.count("<mark>man</mark>") == 2


def test_the_funnel_figure_shows_the_rules_only(run_root):
    from clipdpo.report.figures import run_figures

    (funnel,) = [f for f in run_figures(gather(run_root, Storage())) if f.name == "filter_funnel"]
    assert len(funnel.figure.axes[0].patches) == len(fx.FUNNEL)  # not the shards' "seconds"


def test_headline_numbers_and_markdown(reported_run):
    run_root, written = reported_run.root, reported_run.written
    numbers = json.loads(open(f"{run_root}/report/headline.json").read())
    assert numbers == written.headline
    assert numbers["train_final_loss"] == pytest.approx(0.69 - 0.05 * 4)
    assert numbers["train_reward_accuracy"] == 1.0 and numbers["train_samples_per_s"] == 8.0
    assert (numbers["base_amber_chair"], numbers["clip-dpo_amber_chair"]) == (10.0, 6.0)
    assert (numbers["base_amber_f1"], numbers["clip-dpo_amber_score"]) == (70.0, (100 - 6 + 74) / 2)
    assert numbers["filter_rows"] == 4.0
    run_wide, by_model = split_headline(numbers, ["base", "clip-dpo"])
    assert by_model["amber_chair"] == {"base": 10.0, "clip-dpo": 6.0} and "amber_chair" not in run_wide
    assert run_wide["train_final_loss"] == numbers["train_final_loss"]
    # a model whose name extends another's (povid, povid_text) keeps its own numbers
    _, nested = split_headline({"povid_amber_chair": 5.0, "povid_text_amber_chair": 4.0}, ["povid", "povid_text"])
    assert nested == {"amber_chair": {"povid": 5.0, "povid_text": 4.0}}
    text = written.markdown
    assert "| train_final_loss | 0.49 |" in text and "`clip_scores.png`" in text
    assert "## Evaluation" in text and "AMBER (Table 2)" in text
    # the evaluation's deltas with their bootstrap intervals (metrics.json's effects), in both forms
    assert "-4.0 [-6.5, -1.5]" in text and "-4.0 [-6.5, -1.5]" in written.html
    assert "1000 resamples" in text
    assert "Warning" not in text and "Warning" not in written.html  # chosen rewards rise in the fixture


def test_falling_chosen_logps_warn_in_the_report(tmp_path):
    root = fx.write_run(str(tmp_path / "run"))
    falling = [{**row, "rewards/chosen": -0.01 * row["step"]} for row in fx.TRAIN_ROWS]
    Storage().write_bytes(f"{root}/model/metrics.jsonl", "".join(json.dumps(r) + "\n" for r in falling).encode())
    written = report.write(root, Storage())
    assert "<p class='warn'><b>Warning</b>: chosen log-probs fell below the reference" in written.html
    assert "> **Warning**: chosen log-probs fell" in written.markdown


def test_a_run_of_several_rounds_gets_a_curve_per_round(tmp_path):
    """<run_root>/rounds.json names the rounds: each round's pairs kept and its captions' CLIP scores (round 1's
    artifacts under the run root, round 2's under round-2/), and the headline metrics of base, round1, round2 with
    each round's bootstrap interval (base + the interval of round minus base) where metrics.json's effects have it."""
    from matplotlib.container import ErrorbarContainer

    from clipdpo import plots
    from clipdpo.report.figures import round_intervals, round_metrics, run_figures
    from clipdpo.report.render import headline

    storage, root = Storage(), fx.write_run(str(tmp_path / "run"))
    fx.write_run(f"{root}/round-2")  # round 2's scores and pairs: the same numbers, under its own root
    record = {"rounds": [{"round": 1, "passed": True}, {"round": 2, "passed": False}]}
    storage.write_bytes(f"{root}/rounds.json", json.dumps(record).encode())
    metrics = json.loads(storage.read_bytes(f"{root}/evaluation/metrics.json"))

    def others(top1, pope=None):  # zero-shot top-1 and POPE F1 of one model
        return {"zero_shot": {"objects": {"top1": top1}}, **({"suite": {"pope": {"headline": pope}}} if pope else {})}

    metrics["results"]["base"].update(others(90.0, 85.0))
    for name, amber, more in (
        ("round1", (8.0, 30.0, 72.0), others(95.0, 86.0)),
        ("round2", (9.0, 35.0, 71.0), others(100.0)),
    ):
        metrics["models"].insert(-1, {"name": name})  # (CHAIR, Hal, F1); round 2 has no POPE
        metrics["results"][name] = {"amber": fx._amber(*amber, existence_f1=80.0), **more}
    effect = {"delta": 0.0, "resamples": 1000, "images": 2}  # the delta is not drawn: the value is
    metrics["effects"]["round1"] = {
        "amber.generative.chair": {**effect, "ci95": [-3.5, -0.5]},
        "zero_shot.objects.top1": {**effect, "ci95": [1.0, 9.0]},
    }
    metrics["effects"]["round2"] = {"amber.generative.chair": {**effect, "ci95": [-2.0, 0.5]}}
    storage.write_bytes(f"{root}/evaluation/metrics.json", json.dumps(metrics).encode())

    run = gather(root, Storage())
    assert [(r.index, r.passed, r.pairs) for r in run.rounds] == [(1, True, 4), (2, False, 4)]  # 3 caption + 1 qa
    captions = [score for _, scores in fx.CAPTIONS.values() for score in scores]  # the qa row has no score
    assert run.rounds[0].caption_scores == captions and run.rounds[1].caption_scores == captions
    # base, round 1, round 2; AMBER score (100 - CHAIR + F1) / 2: (100 - 10 + 70) / 2 = 80, then 82, 81
    values = {
        "CHAIR ↓": [10.0, 8.0, 9.0],
        "Hal ↓": [40.0, 30.0, 35.0],
        "Cover ↑": [50.0, 50.0, 50.0],
        "AMBER F1 ↑": [70.0, 72.0, 71.0],
        "AMBER score ↑": [80.0, 82.0, 81.0],
        "objects top-1 ↑": [90.0, 95.0, 100.0],
        "POPE F1 ↑": [85.0, 86.0, None],
    }
    assert round_metrics(run) == values and list(round_metrics(run)) == list(values)
    # CHAIR: 10 + [-3.5, -0.5] and 10 + [-2.0, 0.5]; top-1: 90 + [1, 9]; the base and the rest have none
    intervals = {label: [None, None, None] for label in values}
    intervals["CHAIR ↓"] = [None, (6.5, 9.5), (8.0, 10.5)]
    intervals["objects top-1 ↑"] = [None, (91.0, 99.0), None]
    assert round_intervals(run) == intervals
    numbers = headline(run)
    assert numbers["round1_pairs_kept"] == 4.0 and numbers["round2_caption_clip_mean"] == pytest.approx(28.6875)
    (curve,) = [f.figure for f in run_figures(run) if f.name == "rounds"]
    assert plots.to_png(curve).startswith(b"\x89PNG")
    # one axis per metric (then pairs kept, CLIP scores), error bars only where there are intervals
    *metric_axes, pairs_ax, scores_ax = curve.axes
    assert [ax.get_title() for ax in metric_axes] == list(values)
    assert pairs_ax.get_title() == "pairs kept per round"
    bars = {ax.get_title(): [c for c in ax.containers if isinstance(c, ErrorbarContainer)] for ax in metric_axes}
    assert {label for label, found in bars.items() if found} == {"CHAIR ↓", "objects top-1 ↑"}
    (chair_bars,) = bars["CHAIR ↓"]
    (segments,) = [lines.get_segments() for lines in chair_bars.lines[2]]
    assert np.allclose(segments, [[[1, 6.5], [1, 9.5]], [[2, 8.0], [2, 10.5]]])
    one_round = gather(fx.write_run(str(tmp_path / "one")), Storage())
    assert one_round.rounds == [] and "rounds" not in [f.name for f in run_figures(one_round)]


def test_a_rounds_interval_is_the_base_plus_the_paired_difference_interval():
    """world-0's round 1 CHAIR: base 10.6, round minus base -4.0 [-4.9, -3.1] -> [10.6 - 4.9, 10.6 - 3.1]."""
    from clipdpo.report.figures import round_interval

    effect = {"delta": -4.0, "ci95": [-4.9, -3.1], "images": 300, "resamples": 1000}
    assert round_interval(10.6, effect) == pytest.approx((5.7, 7.5))
    assert round_interval(98.98, {"ci95": [0.0, 3.06]}) == pytest.approx((98.98, 100.0))  # a rate stops at 100
    assert round_interval(1.0, {"ci95": [-2.0, 0.5]}) == pytest.approx((0.0, 1.5))  # and at 0
    assert round_interval(None, effect) is None  # no base value to add it to
    assert round_interval(10.6, None) is None and round_interval(10.6, {"delta": -4.0}) is None
