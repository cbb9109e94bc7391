"""Generated docs: the config reference and the results pages.

    python scripts/gen_docs.py config [--out docs/config-reference.md]
    python scripts/gen_docs.py results docs/results/data/<run>.metrics.json ... [--out docs/results]

`config` lists every field of every run config (`clipdpo.stages.CONFIG_NAMES`: the stages' and the extra ones),
nested dataclasses included, with its type, default and the comment written beside it in the source. The classes
are read from their source files (ast + tokenize), not imported: the train and score configs' modules import
torch, and reading the source is what gives the comments anyway. `results` writes one page per evaluation
`metrics.json`: the headline per model with its change against the run's baseline; a `<run>.note.md` beside
the input (what was run, when, on what) is copied under the page's title. tests/project/test_docs.py regenerates both
and compares them with what is committed.
"""

from __future__ import annotations

import argparse
import ast
import io
import json
import sys
import tokenize
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = (ROOT / "src", ROOT)  # where `clipdpo.x.y` and `pipelines.x` live
CONFIG_PAGE = ROOT / "docs" / "config-reference.md"
RESULTS_DIR = ROOT / "docs" / "results"
SHORT_DEFAULT = 70  # longer defaults are shown by the expression that builds them


# ---------------------------------------------------------------- config reference


@dataclass
class Module:
    name: str
    path: Path
    tree: ast.Module
    comments: dict[int, tuple[str, bool]]  # line -> (comment text, trailing: code before it on the line)

    def classes(self) -> dict[str, ast.ClassDef]:
        return {node.name: node for node in self.tree.body if isinstance(node, ast.ClassDef)}

    def imported(self, name: str) -> str | None:
        """The module `name` was imported from (`from M import name`), absolute."""
        for node in self.tree.body:
            if isinstance(node, ast.ImportFrom) and any((a.asname or a.name) == name for a in node.names):
                if node.level:
                    package = self.name if self.path.name == "__init__.py" else self.name.rpartition(".")[0]
                    for _ in range(node.level - 1):
                        package = package.rpartition(".")[0]
                    return f"{package}.{node.module}" if node.module else package
                return node.module
        return None

    def constant(self, name: str):
        """The literal a module-level `name = <literal>` binds (ValueError if none)."""
        for node in self.tree.body:
            if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
                return ast.literal_eval(node.value)
        raise ValueError(name)


@dataclass
class Field:
    name: str
    type: str
    default: str
    doc: str
    nested: list[tuple[str, "ConfigClass"]] = field(default_factory=list)  # (key suffix, class) of nested configs
    overrides: dict[str, str] = field(default_factory=dict)  # the nested config's defaults this field changes


@dataclass
class ConfigClass:
    name: str
    module: str
    doc: str
    rows: list[Field | str]  # a str is a section heading written in the class body as a short comment


_modules: dict[str, Module] = {}


def module_path(name: str) -> Path:
    parts = name.split(".")
    for base in SOURCES:
        for candidate in (base.joinpath(*parts).with_suffix(".py"), base.joinpath(*parts, "__init__.py")):
            if candidate.is_file():
                return candidate
    raise FileNotFoundError(f"module {name}: no source under {[str(s) for s in SOURCES]}")


def load_module(name: str) -> Module:
    if name not in _modules:
        path = module_path(name)
        text = path.read_text()
        comments: dict[int, tuple[str, bool]] = {}
        code_lines: set[int] = set()
        skip = (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT)
        for token in tokenize.generate_tokens(io.StringIO(text).readline):
            if token.type == tokenize.COMMENT:
                line = token.start[0]
                comments[line] = (token.string.lstrip("#").strip(), line in code_lines)
            elif token.type not in skip:
                code_lines.update(range(token.start[0], token.end[0] + 1))
        _modules[name] = Module(name, path, ast.parse(text), comments)
    return _modules[name]


def find_class(module: Module, name: str) -> tuple[Module, ast.ClassDef] | None:
    """The class `name` as seen from `module`: defined there, or imported from a module of this checkout."""
    if name in module.classes():
        return module, module.classes()[name]
    source = module.imported(name)
    if source is None:
        return None
    try:
        return find_class(load_module(source), name)
    except FileNotFoundError:  # a third-party class: not a config of ours
        return None


def is_dataclass(node: ast.ClassDef) -> bool:
    def name(decorator: ast.expr) -> str:
        target = decorator.func if isinstance(decorator, ast.Call) else decorator
        return target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", "")

    return any(name(d) == "dataclass" for d in node.decorator_list)


def comment_block_above(module: Module, line: int) -> list[str]:
    """The comment lines directly above `line` (own-line comments, no blank line between), top first."""
    block = []
    line -= 1
    while line in module.comments and not module.comments[line][1]:
        block.insert(0, module.comments[line][0])
        line -= 1
    return block


def default_text(module: Module, value: ast.expr | None) -> tuple[str, str | None]:
    """(the default as shown, the name of a dataclass it builds by default_factory or None)."""
    if value is None:
        return "required", None
    if isinstance(value, ast.Call) and getattr(value.func, "id", "") == "field":
        keywords = {k.arg: k.value for k in value.keywords}
        if "default" in keywords:
            return default_text(module, keywords["default"])
        factory = keywords.get("default_factory")
        if factory is None:
            return "required", None
        if isinstance(factory, ast.Lambda):
            return shown(module, factory.body), None
        if isinstance(factory, ast.Name):
            found = find_class(module, factory.id)
            if found and is_dataclass(found[1]):
                return f"{factory.id}()", factory.id
            empty = {"list": "[]", "dict": "{}", "tuple": "()", "set": "set()"}
            return empty.get(factory.id) or factory_result(module, factory.id), None
        return ast.unparse(factory) + "()", None
    return shown(module, value), None


def factory_result(module: Module, name: str) -> str:
    """What a module-level factory function `name` returns, where its body is one return of a short expression
    (a default built by a function reads as the value it builds); else `name()`."""
    for node in module.tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            returns = [n for n in node.body if isinstance(n, ast.Return)]
            if len(returns) == 1 and returns[0].value is not None:
                text = ast.unparse(returns[0].value)
                return text if len(text) <= 2 * SHORT_DEFAULT else f"{name}()"
    return f"{name}()"


def call_keywords(value: ast.expr | None) -> dict[str, str]:
    """`X(a=1, b="s")` (or field(default=X(...))) -> {"a": "1", "b": '"s"'}: a nested config's defaults as this
    field sets them."""
    if isinstance(value, ast.Call) and getattr(value.func, "id", "") == "field":
        keywords = {k.arg: k.value for k in value.keywords}
        factory = keywords.get("default_factory")
        value = keywords.get("default") or (factory.body if isinstance(factory, ast.Lambda) else None)
    if not isinstance(value, ast.Call):
        return {}
    out = {}
    for keyword in value.keywords:
        try:
            out[keyword.arg] = json.dumps(ast.literal_eval(keyword.value))
        except ValueError:
            out[keyword.arg] = ast.unparse(keyword.value)
    return out


def shown(module: Module, value: ast.expr) -> str:
    """A default expression as a reader wants it: the value where it is a short literal (module constants and
    list(CONSTANT) resolved), else the expression."""
    target = value
    if isinstance(value, ast.Call) and getattr(value.func, "id", "") in ("list", "tuple", "dict") and value.args:
        target = value.args[0]
    try:
        literal = ast.literal_eval(target) if not isinstance(target, ast.Name) else module.constant(target.id)
    except (ValueError, SyntaxError, TypeError):
        return ast.unparse(value)
    if isinstance(value, ast.Call) and getattr(value.func, "id", "") == "list":
        literal = list(literal)
    text = json.dumps(literal) if not isinstance(literal, (tuple, set)) else repr(literal)
    return text if len(text) <= SHORT_DEFAULT else ast.unparse(value)


def annotation_classes(module: Module, annotation: ast.expr) -> list[tuple[str, str]]:
    """(key suffix, class name) of the dataclasses an annotation names: `X` -> ("", X); `list[X]`,
    `tuple[X, ...]` -> ("[]", X); `dict[str, X]` -> ("{}", X); `X | None` -> ("", X)."""
    out = []
    if isinstance(annotation, ast.Constant) and isinstance(annotation.value, str):
        annotation = ast.parse(annotation.value, mode="eval").body
    if isinstance(annotation, ast.Name):
        found = find_class(module, annotation.id)
        if found and is_dataclass(found[1]):
            out.append(("", annotation.id))
    elif isinstance(annotation, ast.BinOp):  # X | None
        out += annotation_classes(module, annotation.left) + annotation_classes(module, annotation.right)
    elif isinstance(annotation, ast.Subscript):
        container = getattr(annotation.value, "id", "")
        suffix = {"list": "[]", "tuple": "[]", "Sequence": "[]", "dict": "{}", "Mapping": "{}"}.get(container, "")
        inner = annotation.slice
        items = inner.elts if isinstance(inner, ast.Tuple) else [inner]
        if container in ("dict", "Mapping"):
            items = items[1:]
        for item in items:
            out += [(suffix + s, n) for s, n in annotation_classes(module, item)]
    return out


def read_class(module: Module, node: ast.ClassDef, seen: dict[str, ConfigClass]) -> ConfigClass:
    key = f"{module.name}.{node.name}"
    if key in seen:
        return seen[key]
    config = ConfigClass(node.name, module.name, (ast.get_docstring(node) or "").strip(), [])
    seen[key] = config
    for base in node.bases:  # a dataclass's inherited fields come first
        found = find_class(module, getattr(base, "id", ""))
        if found and is_dataclass(found[1]):
            config.rows += read_class(*found, seen).rows
    body = node.body
    for index, statement in enumerate(body):
        if not (isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name)):
            continue
        if ast.unparse(statement.annotation).startswith(("ClassVar", "typing.ClassVar")):
            continue
        above = comment_block_above(module, statement.lineno)
        blank_before = statement.lineno - len(above) - 1 not in module.comments and not any(
            getattr(b, "end_lineno", 0) == statement.lineno - len(above) - 1 for b in body
        )
        if above and blank_before and len(above) == 1 and len(above[0].split()) <= 4:
            config.rows.append(above[0])  # a section heading ("# model", "# optimisation"), not this field's doc
            above = []
        trailing = [
            module.comments[line][0]
            for line in range(statement.lineno, statement.end_lineno + 1)
            if line in module.comments and module.comments[line][1]
        ]
        after = body[index + 1] if index + 1 < len(body) else None  # an attribute docstring
        if isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str):
            trailing.append(" ".join(after.value.value.split()))
        default, factory_class = default_text(module, statement.value)
        row = Field(
            statement.target.id,
            ast.unparse(statement.annotation),
            default,
            " ".join(above + trailing),
            overrides=call_keywords(statement.value),
        )
        nested = annotation_classes(module, statement.annotation)
        if factory_class and not any(name == factory_class for _, name in nested):
            nested.append(("", factory_class))
        for suffix, name in nested:
            found = find_class(module, name)
            if found:
                row.nested.append((suffix, read_class(*found, seen)))
        config.rows.append(row)
    return config


def config_targets() -> list[tuple[str, str]]:
    """(config name, "module:Class") for each of the run's configs, in the run's order."""
    sys.path.insert(0, str(ROOT / "src"))
    from clipdpo import stages  # imports nothing beyond the standard library

    return [(name, stages.EXTRA_CONFIGS.get(name) or stages.stage(name).config) for name in stages.CONFIG_NAMES]


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_class(
    config: ConfigClass, path: str, out: list[str], done: set[str], overrides: dict[str, str] | None = None
) -> None:
    """`config`'s table under the key path `path`, then its nested configs'. `overrides`: defaults the parent
    field sets (`sampling: Sampling = Sampling(max_new_tokens=512)`), shown instead of the class's own."""
    overrides = overrides or {}
    out += [f"### `{path}` ({config.name}, `{config.module}`)", ""]
    if config.doc:
        out += [" ".join(paragraph.split()) + "\n" for paragraph in config.doc.split("\n\n")]
    out += ["| key | type | default | meaning |", "|---|---|---|---|"]
    nested: list[tuple[str, ConfigClass, dict[str, str]]] = []
    for row in config.rows:
        if isinstance(row, str):
            out.append(f"| **{_cell(row)}** | | | |")
            continue
        default = overrides.get(row.name, row.default)
        out.append(f"| `{row.name}` | `{_cell(row.type)}` | `{_cell(default)}` | {_cell(row.doc)} |")
        nested += [
            (f"{path}.{row.name}{suffix}", cls, row.overrides if not suffix else {}) for suffix, cls in row.nested
        ]
    out.append("")
    for sub_path, cls, sub_overrides in nested:
        if sub_path not in done:
            done.add(sub_path)
            render_class(cls, sub_path, out, done, sub_overrides)


def config_reference() -> str:
    out = [
        "# Config reference",
        "",
        "Generated from the config dataclasses by `python scripts/gen_docs.py config`; do not edit by hand "
        "(tests/project/test_docs.py fails when this page and the code differ).",
        "",
        "Each run takes one JSON object per config below: locally `<config-dir>/<name>.json`, on a cluster the "
        "pipeline parameter `<name>_config`, for a stage run by hand `--config FILE`. `--set KEY=VALUE` "
        "(`--set NAME.KEY=VALUE` on `python -m pipelines.run`) changes one key; a dotted key reaches into a "
        "nested config. An unknown key or a value of the wrong type is refused with the key named.",
        "",
    ]
    out += [f"- [`{name}`](#{name}) ({target.split(':')[1]})" for name, target in config_targets()]
    out.append("")
    for name, target in config_targets():
        out += [f"## {name}", ""]
        render_class(config_tree(target), name, out, set())
    return "\n".join(out).rstrip() + "\n"


def config_tree(target: str) -> ConfigClass:
    """The config class `module:Class` read from its source, nested configs included."""
    module_name, class_name = target.split(":")
    found = find_class(load_module(module_name), class_name)
    if found is None:
        raise SystemExit(f"{target}: class not found in the sources")
    return read_class(*found, {})


# ---------------------------------------------------------------- results pages

AMBER_COLUMNS = (
    ("CHAIR ↓", ("amber", "generative", "chair")),
    ("Hal ↓", ("amber", "generative", "hal")),
    ("Cover ↑", ("amber", "generative", "cover")),
    ("Cog ↓", ("amber", "generative", "cog")),
    ("F1 ↑", ("amber", "discriminative", "f1")),
    ("AMBER score ↑", ("amber", "amber_score")),
)


def _get(data: dict, path: tuple[str, ...]):
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data if isinstance(data, (int, float)) and not isinstance(data, bool) else None


def headline_columns(metrics: dict) -> list[tuple[str, tuple[str, ...]]]:
    """AMBER's figures, then POPE (the suite's pope benchmarks) and each zero-shot dataset's top-1: those any
    model of the run has."""
    results = metrics.get("results", {})
    columns = [c for c in AMBER_COLUMNS if any(_get(r, c[1]) is not None for r in results.values())]
    suite = dict.fromkeys(
        label for r in results.values() for label, b in (r.get("suite") or {}).items() if b.get("kind") == "pope"
    )
    columns += [
        (f"{label} F1 ↑" if label == "pope" else f"POPE {label} F1 ↑", ("suite", label, "headline")) for label in suite
    ]
    datasets = dict.fromkeys(d for r in results.values() for d in (r.get("zero_shot") or {}))
    columns += [(f"zero-shot {d} top-1 ↑", ("zero_shot", d, "top1")) for d in datasets]
    return [(title.replace("pope F1", "POPE F1"), path) for title, path in columns]


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def results_page(name: str, metrics: dict, note: str, source: str) -> str:
    models = [m["name"] for m in metrics.get("models", [])] or list(metrics.get("results", {}))
    baseline = metrics.get("baseline") or models[0]
    results = metrics.get("results", {})
    columns = headline_columns(metrics)
    out = [
        f"# Results: {name}",
        "",
        f"Generated by `python scripts/gen_docs.py results {source} --out "
        f"docs/results` from [{Path(source).name}](data/{Path(source).name}); do not edit by hand.",
        "",
    ]
    if note:
        out += [note.strip(), ""]
    out += ["| model | " + " | ".join(title for title, _ in columns) + " |", "|---|" + "---:|" * len(columns)]
    for model in models:
        cells = [_fmt(_get(results.get(model, {}), path)) for _, path in columns]
        out.append(f"| {model} | " + " | ".join(cells) + " |")
    for model in (m for m in models if m != baseline):
        cells = []
        for _, path in columns:
            value, base = _get(results.get(model, {}), path), _get(results.get(baseline, {}), path)
            cells.append("–" if value is None or base is None else f"{value - base:+.2f}")
        out.append(f"| Δ {model} vs {baseline} | " + " | ".join(cells) + " |")
        effects = (metrics.get("effects") or {}).get(model) or {}
        intervals = [effects.get(".".join(path), {}).get("ci95") for _, path in columns]
        if any(intervals):
            cells = ["–" if not ci else f"[{ci[0]:+.2f}, {ci[1]:+.2f}]" for ci in intervals]
            out.append("| 95% interval (paired bootstrap over images) | " + " | ".join(cells) + " |")
    out.append("")
    relative = [(title, path) for title, path in columns if title.split()[0] in ("CHAIR", "Hal")]
    if relative and len(models) > 1:
        out += [
            f"Relative change against {baseline}: "
            + "; ".join(
                f"{model} "
                + ", ".join(
                    f"{title.split()[0]} {100 * (v - b) / b:+.0f}%"
                    for title, path in relative
                    if (v := _get(results.get(model, {}), path)) is not None
                    and (b := _get(results.get(baseline, {}), path))
                )
                for model in models
                if model != baseline
            )
            + ".",
            "",
        ]
    resources = {
        key: value.get("description") if isinstance(value, dict) else value
        for key, value in sorted((metrics.get("resources") or {}).items())
    }
    shown_resources = [f"{key}: {value}" for key, value in resources.items() if isinstance(value, (str, int, float))]
    if shown_resources:
        out += ["Resources: " + "; ".join(shown_resources) + ".", ""]
    if metrics.get("complete") is False:
        out += ["**Incomplete**: some responses were missing when these numbers were computed.", ""]
    return "\n".join(out).rstrip() + "\n"


def run_name(path: Path) -> str:
    return path.name.removesuffix(".json").removesuffix(".metrics")


def results_pages(inputs: list[Path]) -> dict[str, str]:
    """Page file name -> text, for each metrics.json (named <run>.metrics.json; <run>.note.md beside it)."""
    pages = {}
    for path in inputs:
        try:
            metrics = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise SystemExit(f"error: {path}: not a readable metrics.json ({err})") from None
        if not isinstance(metrics, dict) or not isinstance(metrics.get("results"), dict):
            raise SystemExit(f"error: {path}: expected an evaluation metrics.json with a 'results' object")
        name = run_name(path)
        note_path = path.with_name(f"{name}.note.md")
        note = note_path.read_text() if note_path.is_file() else ""
        source = path.resolve().relative_to(ROOT).as_posix() if path.resolve().is_relative_to(ROOT) else str(path)
        pages[f"{name}.md"] = results_page(name, metrics, note, source)
    return pages


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python scripts/gen_docs.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    config = commands.add_parser("config", help="docs/config-reference.md from the config dataclasses")
    config.add_argument("--out", type=Path, default=CONFIG_PAGE)
    results = commands.add_parser("results", help="docs/results/<run>.md from evaluation metrics.json files")
    results.add_argument("inputs", nargs="+", type=Path, help="<run>.metrics.json files")
    results.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    if args.command == "config":
        args.out.write_text(config_reference())
        print(args.out)
    else:
        args.out.mkdir(parents=True, exist_ok=True)
        for name, text in results_pages(args.inputs).items():
            (args.out / name).write_text(text)
            print(args.out / name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
