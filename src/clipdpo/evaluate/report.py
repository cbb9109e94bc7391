"""The evaluation report: the paper's Tables 2-4 for the baseline and each other model, with deltas.

One table model (`Table`: columns with the direction that is better, rows of numbers) rendered
to Markdown (deltas marked 🟢 better / 🔴 worse) and to a standalone HTML page (deltas coloured).
"""

from __future__ import annotations

import html as html_lib
import re
from dataclasses import dataclass, field

LOWER_IS_BETTER = {"CHAIR", "Hal", "Cog"}
AMBER_COLUMNS = [
    ("CHAIR", "generative", "chair"),
    ("Cover", "generative", "cover"),
    ("Hal", "generative", "hal"),
    ("Cog", "generative", "cog"),
    ("Acc.", "discriminative", "accuracy"),
    ("P.", "discriminative", "precision"),
    ("R.", "discriminative", "recall"),
    ("F1", "discriminative", "f1"),
]
AMBER_CATEGORIES = [
    ("Existence", "existence"),
    ("Attribute", "attribute"),
    ("State", "state"),
    ("Number", "number"),
    ("Action", "action"),
    ("Relation", "relation"),
]
SUITE_COLUMNS = [
    ("GQA", "gqa"),
    ("SQA-I", "scienceqa"),
    ("VQA-T", "textvqa"),
    ("POPE", "pope"),
    ("MME-P", "mme"),
    ("MMB", "mmbench"),
]


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[tuple[str, list[float | None]]] = field(default_factory=list)
    note: str = ""
    paths: list[str | None] = field(default_factory=list)  # each column's metric path in metrics.json's effects

    def deltas(self) -> list[tuple[str, list[float | None]]]:
        """Each non-baseline row minus the baseline (first) row."""
        if len(self.rows) < 2:
            return []
        base = self.rows[0][1]
        return [
            (f"Δ {name}", [None if v is None or b is None else v - b for v, b in zip(values, base)])
            for name, values in self.rows[1:]
        ]

    def intervals(self, effects: dict) -> list[list[list[float] | None]]:
        """Per delta row, each column's 95% interval, bootstrapped (None where there is none)."""
        paths = self.paths + [None] * (len(self.columns) - len(self.paths))
        return [
            [(effects.get(name, {}).get(path) or {}).get("ci95") if path else None for path in paths]
            for name, _ in self.rows[1:]
        ]


def interval_text(interval: list[float] | None) -> str:
    return "" if interval is None else f" [{interval[0]:+.1f}, {interval[1]:+.1f}]"


def effects_note(metrics: dict) -> str:
    """How the intervals were made (empty when there are none)."""
    found = [e for by_metric in (metrics.get("effects") or {}).values() for e in by_metric.values()]
    if not found:
        return ""
    return (
        f"Δ rows: [2.5%, 97.5%] paired bootstrap interval of the difference, {found[0]['resamples']} resamples "
        "of the benchmark's images (the same images for both models; every item of an image together)."
    )


def better(column: str, delta: float) -> bool | None:
    if abs(delta) < 0.05:
        return None
    lower = column.split(" ")[0] in LOWER_IS_BETTER
    return (delta < 0) if lower else (delta > 0)


def _get(tree: dict, *keys):
    for key in keys:
        if not isinstance(tree, dict) or key not in tree:
            return None
        tree = tree[key]
    return tree


def build_tables(metrics: dict) -> list[Table]:
    """The report's tables, a benchmark at a time, for the benchmarks any model was scored on."""
    names = [model["name"] for model in metrics["models"]]
    results = metrics["results"]
    tables: list[Table] = []
    if any("amber" in results[n] for n in names):
        tables += _amber_tables(names, results)
    if any("zero_shot" in results[n] for n in names):
        tables.append(_zero_shot_table(names, results))
    if any("suite" in results[n] for n in names):
        tables.append(_suite_table(names, results))
    return tables


def _amber_tables(names: list[str], results: dict) -> list[Table]:
    columns = [f"{c} ↓" if c in LOWER_IS_BETTER else f"{c} ↑" if c == "Cover" else c for c, _, _ in AMBER_COLUMNS] + [
        "AMBER"
    ]
    rows = [
        (
            n,
            [_get(results[n], "amber", g, k) for _, g, k in AMBER_COLUMNS] + [_get(results[n], "amber", "amber_score")],
        )
        for n in names
    ]
    incomplete = [n for n in names if _get(results[n], "amber", "complete") is False]
    note = f"INCOMPLETE: scored on part of the items for {', '.join(incomplete)}." if incomplete else ""
    paths = [f"amber.{g}.{k}" if k in ("chair", "cover", "hal", "cog", "f1") else None for _, g, k in AMBER_COLUMNS]
    tables = [
        Table(
            "AMBER (Table 2): generative and discriminative hallucination",
            columns,
            rows,
            note,
            paths + ["amber.amber_score"],
        )
    ]
    rows = [(n, [_get(results[n], "amber", key, "f1") for _, key in AMBER_CATEGORIES]) for n in names]
    if any(v is not None for _, values in rows for v in values):
        tables.append(Table("AMBER discriminative F1 per category", [c for c, _ in AMBER_CATEGORIES], rows))
    return tables


def _zero_shot_table(names: list[str], results: dict) -> Table:
    datasets = list(_get(results[names[0]], "zero_shot") or {})
    rows = []
    for n in names:
        values = [_get(results[n], "zero_shot", d, "top1") for d in datasets]
        present = [v for v in values if v is not None]
        rows.append((n, values + [sum(present) / len(present) if present else None]))
    return Table(
        "Zero-shot classification via captions (Table 3): top-1 accuracy %",
        datasets + ["Avg"],
        rows,
        paths=[f"zero_shot.{d}.top1" for d in datasets],
    )


def _suite_table(names: list[str], results: dict) -> Table:
    labels = list(_get(results[names[0]], "suite") or {})
    rows = []
    for n in names:
        values = [_get(results[n], "suite", label, "headline") for label in labels]
        kinds = [_get(results[n], "suite", label, "kind") for label in labels]
        # the paper's average counts MME (0-2000) divided by 20
        scaled = [v / 20 if k == "mme" else v for v, k in zip(values, kinds) if v is not None]
        rows.append((n, values + [sum(scaled) / len(scaled) if scaled else None]))
    kind_titles = dict((k, t) for t, k in SUITE_COLUMNS)
    first = results[names[0]]["suite"]
    columns = [
        kind_titles.get(first[label]["kind"], label) if label == first[label]["kind"] else label for label in labels
    ]
    return Table(
        "LLaVA benchmark suite (Table 4)",
        columns + ["Avg"],
        rows,
        "POPE: F1 averaged over splits; MME-P: perception score; MMB: circular accuracy; "
        "Avg: MME-P counted /20, as the paper.",
        [f"suite.{label}.headline" for label in labels],
    )


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def _examples(metrics: dict) -> list[tuple[str, dict]]:
    return [(n, e) for n, r in metrics["results"].items() for e in (_get(r, "amber", "examples") or [])]


def mark_words(text: str, words: list[str], left: str, right: str, escape) -> str:
    if not words:
        return escape(text)
    pattern = re.compile(
        r"\b(" + "|".join(re.escape(w) for w in sorted(set(words), key=len, reverse=True)) + r")(s|es)?\b",
        re.IGNORECASE,
    )
    out, last = [], 0
    for match in pattern.finditer(text):
        out += [escape(text[last : match.start()]), left, escape(match.group(0)), right]
        last = match.end()
    return "".join(out + [escape(text[last:])])


def _resources(metrics: dict) -> list[str]:
    r = metrics.get("resources", {})
    lines = []
    if r.get("amber_nlp"):
        lines.append(f"AMBER NLP resources: {r['amber_nlp']}")
    if r.get("amber_discriminative_mode"):
        lines.append(
            f"AMBER discriminative answers: {r['amber_discriminative_mode']} "
            "(logits = the higher of the 'Yes' and 'No' first-token logits)"
        )
    if r.get("amber_decoding"):
        lines.append(f"AMBER descriptions: {r['amber_decoding']['description']}")
    if r.get("zero_shot_text_encoder"):
        lines.append(f"Zero-shot text encoder: {r['zero_shot_text_encoder']}")
    if r.get("cpu"):
        cpu = r["cpu"]
        torch = cpu.get("torch") or {}
        kernels = f"; torch {torch['cpu_capability']} kernels, {torch['intra_op_threads']} thread(s)" if torch else ""
        pinned = ", ".join(f"{k}={v}" for k, v in (cpu.get("environment") or {}).items() if v is not None)
        mkl = f"; MKL branch {cpu['mkl_branch']}" if cpu.get("mkl_branch") else ""
        lines.append(
            f"Scored on: {cpu.get('cpu_model')} ({cpu.get('cpus')} CPUs){kernels}; pins: {pinned or 'none'}{mkl}"
        )
    return lines


def markdown(metrics: dict) -> str:
    out = ["# clipdpo evaluation report", ""]
    if not metrics["complete"]:
        out += ["> **INCOMPLETE RESULTS**: some numbers were computed on part of the items (see the notes).", ""]
    compared = ", ".join(m["name"] for m in metrics["models"][1:]) or "none"
    out += [f"Baseline: **{metrics['baseline']}**; compared with it: {compared}", ""]
    for table in build_tables(metrics):
        out += [
            f"## {table.title}",
            "",
            "| Model | " + " | ".join(table.columns) + " |",
            "|---|" + "---:|" * len(table.columns),
        ]
        out += [f"| {name} | " + " | ".join(_fmt(v) for v in values) + " |" for name, values in table.rows]
        for (name, deltas), intervals in zip(table.deltas(), table.intervals(metrics.get("effects") or {})):
            cells = []
            for column, d, interval in zip(table.columns, deltas, intervals):
                mark = {True: "🟢 ", False: "🔴 ", None: ""}[better(column, d)] if d is not None else ""
                cells.append("–" if d is None else f"{mark}{d:+.1f}{interval_text(interval)}")
            out.append(f"| {name} | " + " | ".join(cells) + " |")
        out += [""] + ([f"_{table.note}_", ""] if table.note else [])
    if effects_note(metrics):
        out += [f"_{effects_note(metrics)}_", ""]
    examples = _examples(metrics)
    if examples:
        out += ["## Qualitative examples (AMBER descriptions; hallucinated objects in bold)", ""]
        for name, example in examples:
            marked = mark_words(
                example["response"], example["hallucinated"], "**", "**", lambda s: s.replace("\n", " ")
            )
            out += [
                f"- **{name}**, AMBER {example['id']}: {marked}  ",
                f"  hallucinated: {', '.join(example['hallucinated'])}",
            ]
        out.append("")
    out += ["## Resources", ""] + [f"- {line}" for line in _resources(metrics)] + [""]
    return "\n".join(out)


TABLE_CSS = (
    "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:.5em}"
    "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}td:first-child,th:first-child{text-align:left}"
    ".better{color:#0a7d22;font-weight:bold}.worse{color:#c0151b;font-weight:bold}"
    ".warn{background:#fff3cd;padding:8px;border:1px solid #e0b000}mark{background:#ffb3b3}"
)


def html(metrics: dict) -> str:
    e = html_lib.escape
    out = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>clipdpo evaluation report</title>",
        f"<style>{TABLE_CSS}</style></head><body><h1>clipdpo evaluation report</h1>",
    ]
    if not metrics["complete"]:
        out.append("<p class='warn'><b>INCOMPLETE RESULTS</b>: some numbers were computed on part of the items.</p>")
    out.append(f"<p>Baseline: <b>{e(metrics['baseline'])}</b></p>")
    out.append(tables_html(metrics))
    examples = _examples(metrics)
    if examples:
        out.append("<h2>Qualitative examples (AMBER descriptions; hallucinated objects marked)</h2><ul>")
        for name, example in examples:
            out.append(
                f"<li><b>{e(name)}</b>, AMBER {example['id']}: "
                + mark_words(example["response"], example["hallucinated"], "<mark>", "</mark>", e)
                + "</li>"
            )
        out.append("</ul>")
    out.append("<h2>Resources</h2><ul>" + "".join(f"<li>{e(line)}</li>" for line in _resources(metrics)) + "</ul>")
    out.append("</body></html>")
    return "\n".join(out)


def tables_html(metrics: dict) -> str:
    """The tables with their delta rows, as HTML (also part of the run report, clipdpo.report)."""
    e = html_lib.escape
    out = []
    for table in build_tables(metrics):
        out.append(
            f"<h2>{e(table.title)}</h2><table><tr><th>Model</th>"
            + "".join(f"<th>{e(c)}</th>" for c in table.columns)
            + "</tr>"
        )
        for name, values in table.rows:
            out.append(f"<tr><td>{e(name)}</td>" + "".join(f"<td>{_fmt(v)}</td>" for v in values) + "</tr>")
        for (name, deltas), intervals in zip(table.deltas(), table.intervals(metrics.get("effects") or {})):
            cells = []
            for column, d, interval in zip(table.columns, deltas, intervals):
                css = {True: "better", False: "worse", None: ""}[better(column, d)] if d is not None else ""
                cells.append(
                    f"<td class='{css}'>" + ("–" if d is None else f"{d:+.1f}{interval_text(interval)}") + "</td>"
                )
            out.append(f"<tr><td>{e(name)}</td>" + "".join(cells) + "</tr>")
        out.append("</table>" + (f"<p><i>{e(table.note)}</i></p>" if table.note else ""))
    if effects_note(metrics):
        out.append(f"<p><i>{e(effects_note(metrics))}</i></p>")
    return "\n".join(out)
