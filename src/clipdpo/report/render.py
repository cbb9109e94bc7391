"""The run report as one self-contained HTML page (figures and thumbnails inlined as base64) and as Markdown.

Sections: headline numbers, training (curves, and a warning when chosen log-probs fall), data (filter
funnel, CLIP scores, caption lengths), evaluation (AMBER bars, the evaluate stage's tables), and
qualitative examples: each held-out image beside every model's description, with the object words
AMBER's scorer counted as hallucinated marked.
"""

from __future__ import annotations

import base64
import html as html_lib

from clipdpo import plots
from clipdpo.evaluate import report as eval_report
from clipdpo.report.gather import Example, RunData
from clipdpo.rounds import round_name

CSS = eval_report.TABLE_CSS + (
    "img.figure{max-width:100%;border:1px solid #ddd;margin:.5em 0}figure{margin:1em 0}"
    "figcaption{color:#555;font-size:90%}table.examples td{vertical-align:top;text-align:left;max-width:32em}"
    "table.examples img{width:160px}"
)


def headline(run: RunData) -> dict[str, float]:
    """The run's main numbers, flat (also the report step's kfp Metrics and the terminal summary)."""
    out: dict[str, float] = {f"{stage}_rows": float(rows) for stage, rows in run.stage_rows.items()}
    final = run.train_summary.get("final") or (run.train_rows[-1] if run.train_rows else {})
    for key, name in (
        ("loss", "train_final_loss"),
        ("rewards/accuracy", "train_reward_accuracy"),
        ("rewards/margin", "train_reward_margin"),
        ("samples_per_s", "train_samples_per_s"),
    ):
        if final.get(key) is not None:
            out[name] = float(final[key])
    for each in run.rounds:  # a run of several rounds: per round, as a model's numbers (round<k>_...)
        if each.pairs is not None:
            out[f"{round_name(each.index)}_pairs_kept"] = float(each.pairs)
        if each.caption_scores:
            mean = sum(each.caption_scores) / len(each.caption_scores)
            out[f"{round_name(each.index)}_caption_clip_mean"] = float(mean)
    evaluation = run.evaluation or {}
    for model in evaluation.get("models", []):
        result = evaluation["results"].get(model["name"], {})
        amber = result.get("amber") or {}
        values = {f"amber_{k}": (amber.get("generative") or {}).get(k) for k in ("chair", "cover", "hal", "cog")}
        values["amber_f1"] = (amber.get("discriminative") or {}).get("f1")
        values["amber_score"] = amber.get("amber_score")
        values.update({f"zero_shot_{d}_top1": r.get("top1") for d, r in (result.get("zero_shot") or {}).items()})
        out.update({f"{model['name']}_{k}": float(v) for k, v in values.items() if v is not None})
    return out


def _img(png: bytes, alt: str, css: str = "figure", mime: str = "image/png") -> str:
    return f"<img class='{css}' alt='{html_lib.escape(alt)}' src='data:{mime};base64,{base64.b64encode(png).decode()}'>"


def _examples_html(examples: list[Example]) -> str:
    e = html_lib.escape
    models = list(dict.fromkeys(m for ex in examples for m in ex.responses))
    out = [
        "<h2>Qualitative examples (held-out AMBER images; hallucinated objects <mark>marked</mark>)</h2>",
        "<table class='examples'><tr><th>image</th>" + "".join(f"<th>{e(m)}</th>" for m in models) + "</tr>",
    ]
    for ex in examples:
        cell = _img(ex.image, f"AMBER {ex.item_id}", "thumb", "image/jpeg") if ex.image else "(image not found)"
        row = [f"<td>{cell}<br>AMBER {ex.item_id}</td>"]
        for model in models:
            text, words = ex.responses.get(model, ("", []))
            marked = eval_report.mark_words(text, words, "<mark>", "</mark>", e)
            row.append(f"<td>{marked}<br><small>hallucinated: {e(', '.join(words)) or 'none'}</small></td>")
        out.append("<tr>" + "".join(row) + "</tr>")
    return "\n".join(out + ["</table>"])


def split_headline(numbers: dict[str, float], models: list[str]) -> tuple[dict[str, float], dict[str, dict]]:
    """A headline as (run-wide numbers, {metric: {model: value}}), for a models-side-by-side table."""
    run_wide: dict[str, float] = {}
    by_model: dict[str, dict[str, float]] = {}
    longest_first = sorted(models, key=len, reverse=True)  # "povid_text_amber_chair" is povid_text's, not povid's
    for key, value in numbers.items():
        model = next((m for m in longest_first if key.startswith(m + "_")), None)
        if model is None:
            run_wide[key] = value
        else:
            by_model.setdefault(key[len(model) + 1 :], {})[model] = value
    return run_wide, by_model


def _headline_html(run: RunData) -> str:
    e = html_lib.escape
    models = [m["name"] for m in (run.evaluation or {}).get("models", [])]
    run_wide, by_model = split_headline(headline(run), models)
    out = ["<h2>Headline</h2><table><tr><th>run</th><th>value</th></tr>"]
    out += [f"<tr><td>{e(k)}</td><td>{v:.4g}</td></tr>" for k, v in run_wide.items()]
    out.append("</table>")
    if by_model:
        out.append("<table><tr><th>metric</th>" + "".join(f"<th>{e(m)}</th>" for m in models) + "</tr>")
        for metric, values in by_model.items():
            cells = "".join("<td>–</td>" if values.get(m) is None else f"<td>{values[m]:.4g}</td>" for m in models)
            out.append(f"<tr><td>{e(metric)}</td>{cells}</tr>")
        out.append("</table>")
    return "\n".join(out)


def html(run: RunData, figures: list, pngs: dict[str, bytes], examples: list[Example]) -> str:
    """`figures`: report.figures.NamedFigure list; `pngs`: their PNG bytes by name."""
    e = html_lib.escape
    out = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>clipdpo run report</title>",
        f"<style>{CSS}</style></head><body><h1>clipdpo run report</h1><p>Run: <code>{e(run.run_root)}</code></p>",
        _headline_html(run),
    ]
    warning = plots.chosen_logps_warning(run.train_rows)
    section = None
    for figure in figures:
        if figure.section != section:
            section = figure.section
            out.append(f"<h2>{e(section)}</h2>")
            if section == "Training" and warning:
                out.append(f"<p class='warn'><b>Warning</b>: {e(warning)}</p>")
        out.append(
            f"<figure>{_img(pngs[figure.name], figure.name)}<figcaption>{e(figure.caption)} "
            f"(<a href='{figure.name}.png'>{figure.name}.png</a>)</figcaption></figure>"
        )
    if run.evaluation:
        out.append(eval_report.tables_html(run.evaluation))
    if examples:
        out.append(_examples_html(examples))
    out.append("</body></html>")
    return "\n".join(out)


def markdown(run: RunData, figures: list) -> str:
    out = ["# clipdpo run report", "", f"Run: `{run.run_root}`", "", "| metric | value |", "|---|---:|"]
    out += [f"| {k} | {v:.4g} |" for k, v in headline(run).items()]
    warning = plots.chosen_logps_warning(run.train_rows)
    if warning:
        out += ["", f"> **Warning**: {warning}"]
    out += ["", "Figures (PNG files beside this report; all inlined in report.html):", ""]
    out += [f"- `{f.name}.png`: {f.caption}" for f in figures]
    if run.evaluation:
        body = eval_report.markdown(run.evaluation).split("\n", 1)[1]  # drop its own title
        out += ["", "## Evaluation", body]
    return "\n".join(out) + "\n"
