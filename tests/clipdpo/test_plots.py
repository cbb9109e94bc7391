"""The report's figures: each PNG decodes, and each figure draws the data it was given (lines, bars,
dots read back from the matplotlib objects), not pixels."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
from PIL import Image

from clipdpo import plots
from clipdpo.filter.select import FUNNEL_ORDER


def _decodes(figure) -> Image.Image:
    image = Image.open(io.BytesIO(plots.to_png(figure)))
    image.load()  # raises on a truncated or corrupt PNG
    assert image.format == "PNG" and image.width > 100 and image.height > 100
    return image


def _labelled_lines(ax):
    return [line for line in ax.get_lines() if not line.get_label().startswith("_")]


def _rows(chosen_rewards):
    return [
        {
            "step": i + 1,
            "loss": 0.7 - 0.1 * i,
            "rewards/accuracy": 0.5 + 0.1 * i,
            "rewards/margin": 0.01 * i,
            "rewards/chosen": c,
            "rewards/rejected": c - 0.01 * i,
        }
        for i, c in enumerate(chosen_rewards)
    ]


def test_training_curves_draw_every_series_and_scale_rewards_to_logps():
    rows = _rows([0.0, 0.01, 0.02, 0.03])
    figure = plots.training_curves(rows, beta=0.1)
    _decodes(figure)
    loss_ax, acc_ax, margin_ax, logp_ax = figure.axes
    for ax, key in ((loss_ax, "loss"), (acc_ax, "rewards/accuracy"), (margin_ax, "rewards/margin")):
        (line,) = _labelled_lines(ax)
        assert list(line.get_xdata()) == [1, 2, 3, 4]
        assert list(line.get_ydata()) == pytest.approx([row[key] for row in rows])
    chosen, rejected = _labelled_lines(logp_ax)
    assert (chosen.get_label(), rejected.get_label()) == ("chosen", "rejected")
    # reward / beta: 0.03 / 0.1 = 0.3 nats above the reference; rejected 0.03 - 0.03 = 0.0
    assert chosen.get_ydata()[-1] == pytest.approx(0.3)
    assert rejected.get_ydata()[-1] == pytest.approx(0.0)
    assert "WARNING" not in figure._suptitle.get_text()


def test_falling_chosen_logps_warn_in_the_figure_and_the_text():
    falling = _rows([0.01, 0.0, -0.01, -0.02, -0.02, -0.03, -0.04, -0.05])
    warning = plots.chosen_logps_warning(falling)
    # last quarter = steps 7-8: mean chosen reward (-0.04 - 0.05) / 2 = -0.045
    assert warning is not None and "-0.0450" in warning and "last 2 step(s)" in warning
    assert "WARNING" in plots.training_curves(falling)._suptitle.get_text()
    # negative early, positive at the end: the policy recovered, no warning
    assert plots.chosen_logps_warning(_rows([-0.05, -0.01, 0.01, 0.02])) is None
    assert plots.chosen_logps_warning([{"step": 1, "loss": 0.69}]) is None  # no reward logged: nothing to judge


def test_clip_scores_histograms_threshold_and_category_bars():
    chosen, rejected = [30.0, 31.5, 29.0, 33.0], [27.0, 28.0, 28.5, 26.0]
    margins = {"kept pairs": [3.0, 3.5, 0.5, 7.0], "widest per image": [3.0, 4.0, 0.5, 7.0, 0.1]}
    by_category = {"people": ([30.0, 31.5], [27.0, 28.0]), "objects": ([29.0], [28.5]), "scenes": ([33.0], [26.0])}
    figure = plots.clip_scores(chosen, rejected, margins, threshold=2.5, by_category=by_category)
    _decodes(figure)
    ax_scores, ax_margin, ax_category = figure.axes
    assert len(ax_scores.patches) == 2 * 20  # two histograms of 20 bins
    counted = sum(p.get_height() for p in ax_scores.patches)
    assert counted == len(chosen) + len(rejected)
    (threshold,) = [line for line in ax_margin.get_lines() if line.get_label().startswith("threshold")]
    assert list(threshold.get_xdata()) == [2.5, 2.5]
    assert sum(p.get_height() for p in ax_margin.patches) == 4 + 5
    bars = ax_category.patches
    assert len(bars) == 2 * len(by_category)
    # categories sorted: objects, people, scenes; chosen bars first: 29.0, mean(30, 31.5), 33.0
    assert [b.get_height() for b in bars[:3]] == pytest.approx([29.0, 30.75, 33.0])
    assert [b.get_height() for b in bars[3:]] == pytest.approx([28.5, 27.5, 26.0])


def test_clip_scores_without_data_still_renders():
    _decodes(plots.clip_scores([], [], {"kept pairs": []}, threshold=None, by_category={}))


def test_filter_funnel_one_bar_per_counter_in_rule_order():
    funnel = {
        "rows_in": 100,
        "captions_in": 80,
        "qa_in": 20,
        "removed_caption_low_score": 30,
        "captions_kept": 50,
        "caption_pairs": 12,
        "extra_counter": 1,
    }
    figure = plots.filter_funnel(funnel, FUNNEL_ORDER)
    _decodes(figure)
    (ax,) = figure.axes
    assert [b.get_width() for b in ax.patches] == [100, 80, 20, 30, 50, 12, 1]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels[3] == "removed caption low score" and labels[-1] == "extra counter"
    red = [b for b in ax.patches if b.get_facecolor()[:3] == pytest.approx((0xD6 / 255, 0x27 / 255, 0x28 / 255))]
    assert len(red) == 1


def test_caption_lengths_one_dot_per_pair_and_share_longer():
    chosen, rejected = [5, 10, 3], [4, 10, 6]
    figure = plots.caption_lengths(chosen, rejected)
    _decodes(figure)
    ax_hist, ax_pairs = figure.axes
    (dots,) = ax_pairs.collections
    assert np.array_equal(dots.get_offsets(), np.array([[4, 5], [10, 10], [6, 3]]))
    assert ax_pairs.get_title() == "chosen longer in 33% of 3 pairs"  # only the first pair: 1 of 3
    assert sum(p.get_height() for p in ax_hist.patches) == 6
    with pytest.raises(ValueError, match="one per pair"):
        plots.caption_lengths([1, 2], [1])


def test_grouped_bars_models_by_labels_with_missing_values():
    values = {
        "base": {"Existence": 80.0, "Attribute": 70.0, "Relation": None},
        "clip-dpo": {"Existence": 85.0, "Attribute": 72.5, "Relation": 60.0},
        "control": {"Existence": 79.0, "Attribute": 69.0, "Relation": 58.0},
    }
    figure = plots.grouped_bars(
        [("AMBER F1", values), ("generative", {"base": {"CHAIR": 10.0}, "clip-dpo": {"CHAIR": 8.0}})]
    )
    _decodes(figure)
    ax_f1, ax_gen = figure.axes
    assert len(ax_f1.patches) == 3 * 3 and len(ax_gen.patches) == 2 * 1
    heights = [b.get_height() for b in ax_f1.patches]
    assert heights[:2] == [80.0, 70.0] and math.isnan(heights[2])  # base's missing Relation: no bar
    assert heights[3:6] == [85.0, 72.5, 60.0]
    assert [t.get_text() for t in ax_f1.get_legend().get_texts()] == ["base", "clip-dpo", "control"]


def test_rounds_curve_one_panel_per_metric_with_its_error_bars():
    """A panel per metric, titled by it, with its own y-axis and error bars for the points that have an interval
    (the interval as given, even one that leaves its point out), then pairs kept and CLIP scores per round."""
    from matplotlib.container import ErrorbarContainer

    metrics = {"CHAIR ↓": [10.0, 8.0, 9.0], "F1 ↑": [70.0, 72.0, None], "POPE ↑": [85.0, 86.0, 84.0]}
    intervals = {"CHAIR ↓": [None, (6.5, 9.5), (9.5, 11.0)], "F1 ↑": [None, None, (69.0, 71.0)]}
    figure = plots.rounds_curve(metrics, [10, None], [[0.2, 0.3, 0.4], []], intervals)
    _decodes(figure)
    assert len(figure.axes) == 5  # 3 metrics + 2 on a 2 x 3 grid, its spare cell removed
    chair, f1, pope, pairs, scores = figure.axes
    assert [ax.get_title() for ax in (chair, f1, pope)] == list(metrics)
    assert [list(ax.get_lines()[0].get_ydata()) for ax in (chair, pope)] == [metrics["CHAIR ↓"], metrics["POPE ↑"]]
    assert chair.get_ylim() != pope.get_ylim()  # not one shared axis
    assert [t.get_text() for t in chair.get_xticklabels()] == ["base", "1", "2"]
    (bars,) = [c for c in chair.containers if isinstance(c, ErrorbarContainer)]
    # round 2's interval (9.5, 11.0) leaves its value 9 out: drawn as it is, not stretched to the point
    assert np.allclose(bars.lines[2][0].get_segments(), [[[1, 6.5], [1, 9.5]], [[2, 9.5], [2, 11.0]]])
    # F1's only interval is at a point with no value (round 2): nothing to draw it at; POPE has none
    assert not [c for ax in (f1, pope) for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert pairs.get_title() == "pairs kept per round" and scores.get_title().startswith("CLIP score")


def test_rounds_curve_without_metrics_still_renders():
    figure = plots.rounds_curve({}, [3, 4], [[], []])
    _decodes(figure)
    assert [ax.get_title() for ax in figure.axes][0] == "headline metrics per round"
    assert len(figure.axes) == 3
