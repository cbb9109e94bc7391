"""The docs stay true to the repository: a short README, links that lead somewhere, make targets that exist, and
generated pages (config reference, results) equal to what their command writes now."""

from __future__ import annotations

import dataclasses
import re
import sys
import typing
from pathlib import Path

import pytest
from file_module import load_file_module

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
# the pages; docs/results/data/ holds the results pages' inputs (a run's note is read as part of its page)
PAGES = [README, *sorted(p for p in DOCS.rglob("*.md") if "data" not in p.relative_to(DOCS).parts)]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
INLINE_CODE = re.compile(r"`[^`\n]*`")


def gen_docs():
    """scripts/gen_docs.py as a module (scripts/ is no package)."""
    return load_file_module("gen_docs", ROOT / "scripts" / "gen_docs.py")


def prose(text: str) -> str:
    """Markdown without code (fenced blocks, inline spans): where links are links."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = FENCE.sub("", path.read_text())
    return {slug(m.group(1)) for m in re.finditer(r"^#+\s+(.*)$", text, re.M)}


def test_readme_is_under_200_lines():
    lines = README.read_text().count("\n")
    assert lines < 200, f"README.md has {lines} lines; move detail to docs/"


def test_every_relative_link_leads_to_a_file_and_heading():
    broken = []
    for page in PAGES:
        for target in LINK.findall(prose(page.read_text())):
            if re.match(r"[a-z]+:", target):  # https:, mailto:
                continue
            path_part, _, anchor = target.partition("#")
            destination = (page.parent / path_part).resolve() if path_part else page
            if not destination.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and destination.suffix == ".md" and anchor not in anchors(destination):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def test_link_checker_sees_a_broken_link(tmp_path):
    """The checker's own parts, on a page with one good and two broken links, and one link inside code."""
    page = tmp_path / "page.md"
    (tmp_path / "there.md").write_text("# A heading, with `code`\n")
    page.write_text(
        "[ok](there.md#a-heading-with-code) [gone](missing.md) [bad](there.md#nope)\n"
        "`[in code](also-missing.md)`\n```\n[fenced](missing-too.md)\n```\n"
    )
    found = LINK.findall(prose(page.read_text()))
    assert found == ["there.md#a-heading-with-code", "missing.md", "there.md#nope"]
    assert anchors(tmp_path / "there.md") == {"a-heading-with-code"}


def test_the_paper_to_code_table_names_files_that_exist():
    text = README.read_text()
    table = text[text.index("## From the paper to the code") :]
    table = table[: table.index("\n## ", 4)]
    rows = [line for line in table.splitlines() if line.startswith("| ") and "`" in line]
    assert len(rows) >= 8
    missing = []
    for row in rows:
        for path in re.findall(r"`([\w/.]+)`", row.split("|")[2]):
            where = ROOT / path if path.startswith("src/") else ROOT / "src" / "clipdpo" / path
            if not where.exists():
                missing.append(path)
    assert not missing, f"README's paper-to-code table names paths that do not exist: {missing}"


def make_targets_named(text: str) -> set[str]:
    """Targets of the `make ...` commands in a page's code (fenced lines and inline spans)."""
    commands = [line for block in re.findall(r"^```.*?^```", text, re.S | re.M) for line in block.splitlines()]
    commands += [span.strip("`") for span in INLINE_CODE.findall(FENCE.sub("", text))]
    targets = set()
    for command in commands:
        for match in re.finditer(r"(?:^|[\s;&|(])make((?:\s+[A-Za-z][\w-]*(?![\w=-]))+)", command):
            targets.update(match.group(1).split())
    return targets


def makefile_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    rules = re.finditer(r"^([\w.-][\w. -]*?)\s*:(?!=)", text, re.M)  # `a b: deps`, not `X := value`
    return {name for match in rules for name in match.group(1).split()}


def test_the_make_targets_the_docs_name_exist():
    named = {page.relative_to(ROOT).as_posix(): make_targets_named(page.read_text()) for page in PAGES}
    assert {"pipeline-run", "test", "test-fast"} <= named["README.md"]
    missing = {page: sorted(targets - makefile_targets()) for page, targets in named.items()}
    assert not {page: t for page, t in missing.items() if t}, f"make targets not in the Makefile: {missing}"


def test_make_target_parser():
    text = (
        "```bash\nmake pipeline-run DEMO=1   # the demo\nmake images push IMAGE_STAGES=x\n```\n"
        "`make lint` and make sense"
    )
    assert make_targets_named(text) == {"pipeline-run", "images", "push", "lint"}


def test_config_reference_is_generated_from_the_code():
    committed = (DOCS / "config-reference.md").read_text()
    assert gen_docs().config_reference() == committed, (
        "docs/config-reference.md differs from the config dataclasses: run `python scripts/gen_docs.py config`"
    )


def field_paths(config, prefix: str) -> set[str]:
    out = set()
    for row in config.rows:
        if isinstance(row, str):
            continue
        out.add(f"{prefix}.{row.name}")
        for suffix, nested in row.nested:
            out |= field_paths(nested, f"{prefix}.{row.name}{suffix}")
    return out


def class_paths(cls: type, prefix: str) -> set[str]:
    hints = typing.get_type_hints(cls)
    out = set()
    for item in dataclasses.fields(cls):
        out.add(f"{prefix}.{item.name}")
        hint = hints[item.name]
        args = typing.get_args(hint)
        origin = typing.get_origin(hint)
        for arg in args or (hint,):
            if dataclasses.is_dataclass(arg):
                container = origin in (list, tuple) or (origin is not None and origin.__name__ == "Sequence")
                suffix = "[]" if container else "{}" if origin is dict else ""
                out |= class_paths(arg, f"{prefix}.{item.name}{suffix}")
    return out


def test_the_source_reader_finds_the_fields_the_classes_have():
    """Checked against the imported classes for the configs that import without torch (the rest, train and score,
    are read the same way); all of them when torch is loaded already."""
    sys.path.insert(0, str(ROOT / "src"))
    from clipdpo import stages

    docs = gen_docs()
    names = stages.CONFIG_NAMES if "torch" in sys.modules else ("ingest", "filter", "evaluate", "gate")
    for name in names:
        target = stages.EXTRA_CONFIGS.get(name) or stages.stage(name).config
        assert field_paths(docs.config_tree(target), name) == class_paths(stages.config_class(name), name), name


def test_results_pages_are_generated_from_their_metrics():
    inputs = sorted((DOCS / "results" / "data").glob("*.metrics.json"))
    assert inputs, "docs/results/data holds no <run>.metrics.json"
    pages = gen_docs().results_pages(inputs)
    committed = {p.name: p.read_text() for p in (DOCS / "results").glob("*.md")}
    assert set(committed) == set(pages), "a results page without its metrics.json, or one not generated"
    for name, text in pages.items():
        assert text == committed[name], (
            f"docs/results/{name} differs from its metrics.json: run `python scripts/gen_docs.py results "
            "docs/results/data/*.metrics.json --out docs/results`"
        )


def test_results_page_shows_each_model_and_its_change_against_the_baseline(tmp_path):
    metrics = {
        "baseline": "base",
        "models": [{"name": "base"}, {"name": "dpo"}],
        "results": {
            "base": {
                "amber": {
                    "generative": {"chair": 10.0, "hal": 40.0, "cover": 50.0, "cog": 2.0},
                    "discriminative": {"f1": 70.0},
                    "amber_score": 80.0,
                },
                "suite": {"pope": {"kind": "pope", "headline": 85.0}},
                "zero_shot": {"pets": {"top1": 60.0}},
            },
            "dpo": {
                "amber": {
                    "generative": {"chair": 7.5, "hal": 30.0, "cover": 49.0, "cog": 1.0},
                    "discriminative": {"f1": 72.0},
                    "amber_score": 82.25,
                },
                "suite": {"pope": {"kind": "pope", "headline": 86.5}},
            },
        },
    }
    path = tmp_path / "run1.metrics.json"
    path.write_text(__import__("json").dumps(metrics))
    (tmp_path / "run1.note.md").write_text("Measured by hand.")
    page = gen_docs().results_pages([path])["run1.md"]
    assert "Measured by hand." in page
    assert "| base | 10.00 | 40.00 | 50.00 | 2.00 | 70.00 | 80.00 | 85.00 | 60.00 |" in page
    assert "| dpo | 7.50 | 30.00 | 49.00 | 1.00 | 72.00 | 82.25 | 86.50 | – |" in page
    assert "| Δ dpo vs base | -2.50 | -10.00 | -1.00 | -1.00 | +2.00 | +2.25 | +1.50 | – |" in page
    assert "dpo CHAIR -25%, Hal -25%" in page


def test_results_command_refuses_a_file_that_is_not_metrics(tmp_path):
    path = tmp_path / "x.metrics.json"
    path.write_text("[1, 2]")
    with pytest.raises(SystemExit, match="x.metrics.json: expected an evaluation metrics.json"):
        gen_docs().results_pages([path])
