"""The three packages stay apart: the product (clipdpo, pipelines) imports neither the synthetic world
(clipdpo_world) nor the experiments (clipdpo_lab); the world does not import the experiments; and no module
imports itself back through others (every import counts, those inside functions too)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {
    "clipdpo": ROOT / "src" / "clipdpo",
    "clipdpo_world": ROOT / "src" / "clipdpo_world",
    "clipdpo_lab": ROOT / "src" / "clipdpo_lab",
    "pipelines": ROOT / "pipelines",
}
PRODUCT = ("clipdpo", "pipelines")
# who may import whom: the product only itself; the world the product; the lab everything
ALLOWED = {
    "clipdpo": {"clipdpo"},
    "pipelines": {"clipdpo", "pipelines"},
    "clipdpo_world": {"clipdpo", "clipdpo_world"},
    "clipdpo_lab": {"clipdpo", "pipelines", "clipdpo_world", "clipdpo_lab"},
}


def module_name(package: str, path: Path) -> str:
    parts = path.relative_to(PACKAGES[package]).with_suffix("").parts
    return ".".join((package, *parts[:-1])) if parts[-1] == "__init__" else ".".join((package, *parts))


def modules() -> dict[str, Path]:
    return {
        module_name(package, path): path
        for package, folder in PACKAGES.items()
        for path in sorted(folder.rglob("*.py"))
    }


def imported(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The project modules `name` imports anywhere in its file (`from a import b` counts a.b where that is a
    module, else a)."""
    found = set()
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imported(name, path, known) for name, path in known.items()}


def top(name: str) -> str:
    return name.split(".", 1)[0]


def test_each_package_imports_only_what_it_may():
    wrong = sorted(
        f"{source} -> {target}"
        for source, targets in graph().items()
        for target in targets
        if top(target) not in ALLOWED[top(source)]
    )
    assert wrong == []


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, found, counter = {}, {}, set(), [], [], [0]

    def visit(start: str) -> None:
        work = [(start, iter(sorted(edges.get(start, ()))))]
        index[start] = low[start] = counter[0]
        counter[0] += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
            elif child not in index:
                index[child] = low[child] = counter[0]
                counter[0] += 1
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(edges.get(child, ())))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles():
    assert cycles(graph()) == []


@pytest.mark.parametrize(
    "edges, expected",
    [
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [["a", "b", "c"]]),
        ({"a": {"b"}, "b": set()}, []),
    ],
)
def test_the_cycle_finder_finds_cycles(edges, expected):
    assert cycles(edges) == expected


def test_the_checks_see_a_forbidden_import(tmp_path, monkeypatch):
    """The graph reads imports inside functions too: a product module importing the world is caught."""
    product = tmp_path / "clipdpo"
    product.mkdir()
    (product / "__init__.py").write_text("")
    (product / "stage.py").write_text("def f():\n    from clipdpo_world.scene import KINDS\n    return KINDS\n")
    world = tmp_path / "clipdpo_world"
    world.mkdir()
    (world / "__init__.py").write_text("")
    (world / "scene.py").write_text("KINDS = ()\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGES", {"clipdpo": product, "clipdpo_world": world})
    wrong = [(s, t) for s, ts in graph().items() for t in ts if top(t) not in ALLOWED[top(s)]]
    assert wrong == [("clipdpo.stage", "clipdpo_world.scene")]
