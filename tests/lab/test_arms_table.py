"""clipdpo_lab.arms_table: the relative cuts and the issues' bars, on hand-made figures."""

from __future__ import annotations

from clipdpo_lab.arms_table import checks, relative_cut, seed_rows


def figures(chair, hal, cover, f1, amber):
    return {"chair": chair, "hal": hal, "cover": cover, "f1": f1, "amber_score": amber}


def test_cuts_and_bars_by_hand():
    base = figures(10.0, 30.0, 95.0, 60.0, 75.0)
    run = {
        "base": base,
        "clipdpo": figures(7.0, 21.3, 92.0, 60.0, 77.0),
        "povid": figures(8.1, 25.0, 95.0, 61.0, 76.0),
        "control": figures(9.1, 30.0, 95.0, 60.0, 75.0),
    }
    assert relative_cut(7.0, 10.0) == -30.0 and abs(relative_cut(21.3, 30.0) + 29.0) < 1e-9  # float rounding only
    bars = checks(run)
    # CHAIR 10 -> 7 is -30% (holds); Hal 30 -> 21.3 is -29% (fails); Cover -3 (holds); F1 level (holds);
    # AMBER +2 (holds); control cuts 0.9, clipdpo 3.0: 0.9 < 1.0 (holds); povid CHAIR -19% (fails)
    assert bars == {
        "clipdpo CHAIR -30%": True,
        "clipdpo Hal -30%": False,
        "clipdpo Cover -3 at most": True,
        "clipdpo F1 not lower": True,
        "clipdpo AMBER +2": True,
        "control CHAIR cut < 1/3 of clipdpo's": True,
        "povid CHAIR -20%": False,
    }
    rows = seed_rows(run)
    assert [r[0] for r in rows] == ["base", "clipdpo", "povid", "control"]  # the report's order, both absent
    assert rows[1][-2:] == ["-30%", "-29%"] and rows[0][-2:] == ["", ""]
