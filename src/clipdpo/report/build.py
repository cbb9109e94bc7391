"""Build and write the run report (see the package docstring)."""

from __future__ import annotations

import json
from dataclasses import dataclass

from clipdpo import plots
from clipdpo.report import REPORT_DIR, render
from clipdpo.report import figures as figures_lib
from clipdpo.report import gather as gather_lib
from clipdpo.storage import Storage, join


@dataclass
class Report:
    uri: str  # the folder holding the files
    html: str
    markdown: str
    headline: dict[str, float]
    files: list[str]  # names written under uri


def build(run_root: str, storage: Storage | None = None) -> tuple[Report, dict[str, bytes]]:
    """The report and its files (name -> bytes), not yet written."""
    storage = storage or Storage()
    run = gather_lib.gather(run_root, storage)
    named = figures_lib.run_figures(run)
    pngs = {f.name: plots.to_png(f.figure) for f in named}
    page = render.html(run, named, pngs, gather_lib.examples(run.evaluation, storage))
    text = render.markdown(run, named)
    numbers = render.headline(run)
    files = {
        "report.html": page.encode(),
        "report.md": text.encode(),
        "headline.json": json.dumps(numbers, indent=2, sort_keys=True).encode(),
    }
    files.update({f"{name}.png": png for name, png in pngs.items()})
    return Report(join(run_root, REPORT_DIR), page, text, numbers, sorted(files)), files


def write(run_root: str, storage: Storage | None = None) -> Report:
    """Build the report and write its files under <run_root>/report/ (report.html last)."""
    storage = storage or Storage()
    report, files = build(run_root, storage)
    for name in sorted(files, key=lambda n: n == "report.html"):
        storage.write_bytes(join(report.uri, name), files[name])
    return report
