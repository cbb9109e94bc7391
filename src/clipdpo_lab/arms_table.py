"""python -m clipdpo_lab.arms_table SEED=METRICS_JSON ...: the arms of world runs side by side (README table).

Reads each run's evaluation metrics.json (`.local/reports/<run>/evaluation/metrics.json`), prints per seed
base, clipdpo, povid, povid_text, both and control (those present) with CHAIR, Hal, Cover, F1, AMBER score and the
relative cuts of
CHAIR and Hal against base, then each figure's mean and range over the seeds, then the bars of issues 15
and 17 per seed (`--checks`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from clipdpo_lab.effect import summary

ORDER = ("base", "clipdpo", "povid", "povid_text", "both", "control")
COLUMNS = (("chair", "CHAIR"), ("hal", "Hal"), ("cover", "Cover"), ("f1", "F1"), ("amber_score", "AMBER"))


def relative_cut(value: float, base: float) -> float:
    """Relative change against base, in percent (negative: lower than base)."""
    return 100.0 * (value - base) / base if base else float("nan")


def seed_rows(figures: dict[str, dict]) -> list[list[str]]:
    base = figures["base"]
    rows = []
    for model in (m for m in ORDER if m in figures):
        row = figures[model]
        cells = [model] + [f"{row[key]:.1f}" for key, _ in COLUMNS]
        cells += ["" if model == "base" else f"{relative_cut(row[key], base[key]):+.0f}%" for key in ("chair", "hal")]
        rows.append(cells)
    return rows


def markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|---" + "|---:" * (len(header) - 1) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def checks(figures: dict[str, dict]) -> dict[str, bool]:
    """The bars set for POVID (CHAIR cut) and CLIP-DPO (CHAIR and Hal cut, control) on one seed."""
    base, out = figures["base"], {}
    if "povid" in figures:
        out["povid CHAIR -20%"] = relative_cut(figures["povid"]["chair"], base["chair"]) <= -20
    if "clipdpo" in figures:
        dpo = figures["clipdpo"]
        out["clipdpo CHAIR -30%"] = relative_cut(dpo["chair"], base["chair"]) <= -30
        out["clipdpo Hal -30%"] = relative_cut(dpo["hal"], base["hal"]) <= -30
        out["clipdpo Cover -3 at most"] = dpo["cover"] >= base["cover"] - 3
        out["clipdpo F1 not lower"] = dpo["f1"] >= base["f1"]
        out["clipdpo AMBER +2"] = dpo["amber_score"] >= base["amber_score"] + 2
        if "control" in figures:
            cut = base["chair"] - dpo["chair"]
            control_cut = base["chair"] - figures["control"]["chair"]
            out["control CHAIR cut < 1/3 of clipdpo's"] = cut > 0 and control_cut < cut / 3
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m clipdpo_lab.arms_table", description=__doc__)
    parser.add_argument("runs", nargs="+", help="SEED=path/to/metrics.json")
    args = parser.parse_args(argv)
    per_seed = {}
    for run in args.runs:
        seed, _, path = run.partition("=")
        per_seed[seed] = summary(json.loads(Path(path).read_text()))
    header = ["model"] + [name for _, name in COLUMNS] + ["CHAIR vs base", "Hal vs base"]
    for seed, figures in per_seed.items():
        print(f"\nworld {seed}\n\n" + markdown(header, seed_rows(figures)))
    models = [m for m in ORDER if all(m in figures for figures in per_seed.values())]
    spread = []
    for model in models:
        cells = [model]
        for key, _ in COLUMNS:
            values = [figures[model][key] for figures in per_seed.values()]
            cells.append(f"{sum(values) / len(values):.1f} ({min(values):.1f}-{max(values):.1f})")
        spread.append(cells)
    header = ["model"] + [name for _, name in COLUMNS]
    print(f"\nmean (range) over worlds {', '.join(per_seed)}\n\n" + markdown(header, spread))
    names = sorted({name for figures in per_seed.values() for name in checks(figures)})
    rows = [[name] + ["yes" if checks(f).get(name) else "no" for f in per_seed.values()] for name in names]
    print("\nbars (issues 15, 17)\n\n" + markdown(["bar"] + [f"world {s}" for s in per_seed], rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
