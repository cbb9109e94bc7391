"""The run report: what a person reads after a run (figures, headline numbers, qualitative examples).

`report.build.write(run_root)` gathers the run's artifacts (any stage may be missing), draws the figures
and writes, under `<run_root>/report/`: report.html (one self-contained file, figures and thumbnails inlined),
report.md, each figure as <name>.png, and headline.json. The pipeline's report step also hands the
HTML and Markdown to kfp as its HTML/Markdown artifacts, so the KFP UI shows them. Each step's kfp
Metrics come from `report.step_metrics`; the local run's terminal summary from `report.local_summary`.
This package's root imports nothing heavy (every step imports step_metrics; only the report step draws).
"""

REPORT_DIR = "report"  # under the run root
