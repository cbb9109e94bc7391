"""Content tags for the stage images: each tag is a hash of exactly what decides that image.

    python -m clipdpo.cluster.imagetags            generate=0.1.0-3f2a9c1d7b4e ... (one per line)
    python -m clipdpo.cluster.imagetags --json     {"generate": "0.1.0-3f2a9c1d7b4e", ...}
    python -m clipdpo.cluster.imagetags --stage train

What goes into a stage's tag:
  - its Dockerfile (build steps);
  - its base images, each pinned by digest (`FROM name:tag@sha256:...`; a base without one is an error);
  - the lockfiles it installs (`COPY locks/<file>`): every package with its hashes, written by
    scripts/lock_images.py from pyproject.toml's pins and the image's extras; and the project version;
  - the clipdpo source files it can import, from the import graph (ast, imports at any depth of a
    module, including lazy ones inside functions), starting at its roots: the modules its
    Dockerfile runs (`python -m ...`; the `python -c "import ..."` smoke check, whose imports run only
    module-level code) and, for every kfp
    component whose base_image is this stage (pipelines/*.py), the clipdpo functions it imports
    (for a function, only the imports of the functions it reaches, so `steps.train_step`'s lazy
    cluster imports stay out of the generate image; `steps.generate_step` imports its stage itself).
Every image copies all of src/, but a file outside that graph cannot run in it, so an unchanged
tag means unchanged behaviour; CI builds a stage only when its tag is not yet in the registry.
Standard library only: CI runs it before installing anything.
"""

from __future__ import annotations

import argparse
import ast
import functools
import hashlib
import json
import os
import shlex
import sys
from dataclasses import dataclass

from clipdpo.stages import IMAGES as STAGES  # the stage images (standard library only, like this module)

PACKAGE = "clipdpo"


TOP_LEVEL = "<module>"  # a Root's function for "importing it only": its module-level statements


@dataclass(frozen=True)
class Root:
    module: str
    function: str = ""  # empty: the whole module, lazy imports in its functions too


# --- the import graph ------------------------------------------------------------------------------


def module_file(src: str, module: str) -> str | None:
    """The file of a clipdpo module (package: its __init__.py); None outside clipdpo or not found."""
    if module.split(".")[0] != PACKAGE:
        return None
    base = os.path.join(src, *module.split("."))
    for path in (base + ".py", os.path.join(base, "__init__.py")):
        if os.path.isfile(path):
            return path
    return None


def _absolute(module: str, node: ast.ImportFrom) -> str:
    """The absolute module an ImportFrom names (relative imports resolved against `module`)."""
    if not node.level:
        return node.module or ""
    package = module.split(".")[: -node.level] if not module.endswith("__init__") else module.split(".")[:-1]
    return ".".join(package + ([node.module] if node.module else []))


def imported_modules(src: str, module: str, nodes) -> set[str]:
    """clipdpo modules that the import statements among `nodes` load (`from a import b`: a.b if a module)."""
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(module, node)
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names if module_file(src, f"{base}.{a.name}"))
    return {name for name in found if module_file(src, name)}


def _parents(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _function_nodes(tree: ast.Module, function: str) -> list[ast.AST]:
    """Module-level statements plus the bodies of `function` and the module functions it calls."""
    functions = {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    if function != TOP_LEVEL and function not in functions:
        raise ValueError(f"no function {function!r} at module level")
    nodes: list[ast.AST] = [n for n in tree.body if not isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    todo, seen = [function] if function != TOP_LEVEL else [], set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for node in ast.walk(functions[name]):
            nodes.append(node)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in functions:
                todo.append(node.func.id)
    return [n for top in nodes for n in (ast.walk(top) if top in tree.body else [top])]


@functools.lru_cache(maxsize=None)
def _parsed(path: str, source: bytes) -> tuple[ast.Module, tuple[ast.AST, ...]]:
    """A file's tree and all its nodes: a function of its bytes alone, so a file that several stages
    reach is parsed once (an edited file has other bytes: parsed anew)."""
    tree = ast.parse(source, filename=path)
    return tree, tuple(ast.walk(tree))


def import_closure(src: str, roots: set[Root]) -> set[str]:
    """Files (relative to src) of every clipdpo module reachable from `roots`."""
    files, queue, done = set(), list(roots), set()
    while queue:
        root = queue.pop()
        if root in done:
            continue
        done.add(root)
        path = module_file(src, root.module)
        if path is None:
            raise ValueError(f"image root {root.module!r} is not a clipdpo module under {src}")
        files.add(os.path.relpath(path, src))
        with open(path, "rb") as handle:
            tree, every_node = _parsed(path, handle.read())
        nodes = _function_nodes(tree, root.function) if root.function else every_node
        for name in imported_modules(src, root.module, nodes) | set(_parents(root.module)):
            queue.append(Root(name))
    return files


# --- where the roots come from ---------------------------------------------------------------------


def _run_commands(dockerfile: str) -> list[list[str]]:
    text = open(dockerfile).read().replace("\\\n", " ")
    lines = [line.strip()[4:] for line in text.splitlines() if line.strip().upper().startswith(("RUN ", "CMD "))]
    commands: list[list[str]] = []
    for line in lines:
        if line.startswith("["):  # exec form
            commands.append(json.loads(line))
            continue
        tokens = shlex.split(line)
        current: list[str] = []
        for token in tokens:
            if token in ("&&", "||", ";"):
                commands.append(current)
                current = []
            else:
                current.append(token)
        commands.append(current)
    return commands


def dockerfile_roots(dockerfile: str) -> set[Root]:
    """Modules the image runs: `python -m X` and the imports of `python -c "..."` smoke checks."""
    roots = set()
    for command in _run_commands(dockerfile):
        for i, token in enumerate(command[:-1]):
            if token == "-m" and command[i + 1].split(".")[0] == PACKAGE:
                roots.add(Root(command[i + 1] + ".__main__"))
            if token == "-c":
                for node in ast.walk(ast.parse(command[i + 1])):
                    if isinstance(node, ast.Import):
                        # importing runs module-level code only; what else runs comes from -m and the components
                        roots.update(Root(a.name, TOP_LEVEL) for a in node.names if a.name.split(".")[0] == PACKAGE)
    return roots


def _instructions(dockerfile: str, keyword: str) -> list[list[str]]:
    """The arguments of every `keyword` instruction (FROM, COPY, ...), continuation lines joined."""
    text = open(dockerfile).read().replace("\\\n", " ")
    return [line.split()[1:] for line in text.splitlines() if line.split()[:1] == [keyword]]


def dockerfile_bases(dockerfile: str) -> list[str]:
    """The images its stages start from, each pinned by digest; other stages of the file (`FROM deps`) left out."""
    stages, bases = set(), []
    for args in _instructions(dockerfile, "FROM"):
        image = next(a for a in args if not a.startswith("--"))
        if image not in stages and image not in bases:
            if "@sha256:" not in image:
                raise ValueError(f"{dockerfile}: base image {image!r} is not pinned by digest (name:tag@sha256:...)")
            bases.append(image)
        if len(args) >= 3 and args[-2].upper() == "AS":
            stages.add(args[-1])
    return bases


def dockerfile_locks(dockerfile: str) -> list[str]:
    """The lockfiles the build copies in (`COPY locks/x.txt ...`), relative to the repository root."""
    return sorted({arg for args in _instructions(dockerfile, "COPY") for arg in args[:-1] if arg.startswith("locks/")})


def _component_stage(node: ast.FunctionDef) -> str | None:
    """`X` of a `@dsl.component(base_image=SETTINGS.image("X"))` function, else None."""
    for decorator in node.decorator_list:
        if not (isinstance(decorator, ast.Call) and getattr(decorator.func, "attr", "") == "component"):
            continue
        for keyword in decorator.keywords:
            value = keyword.value
            if (
                keyword.arg == "base_image"
                and isinstance(value, ast.Call)
                and value.args
                and isinstance(value.args[0], ast.Constant)
                and isinstance(value.args[0].value, str)
            ):
                return value.args[0].value
    return None


def component_roots(pipeline_files: list[str]) -> dict[str, set[Root]]:
    """Per image: the clipdpo functions/modules its kfp components import."""
    roots: dict[str, set[Root]] = {}
    for path in pipeline_files:
        for node in ast.walk(ast.parse(open(path).read(), filename=path)):
            stage = isinstance(node, ast.FunctionDef) and _component_stage(node)
            if not stage:
                continue
            for inner in ast.walk(node):
                if isinstance(inner, ast.ImportFrom) and inner.module and inner.module.split(".")[0] == PACKAGE:
                    roots.setdefault(stage, set()).update(Root(inner.module, a.name) for a in inner.names)
    return roots


# --- the tag ---------------------------------------------------------------------------------------


def _resolve_function_roots(src: str, roots: set[Root]) -> set[Root]:
    """`from clipdpo.x import y`: y is a function of x, or the module x.y."""
    return {
        Root(f"{r.module}.{r.function}") if r.function and module_file(src, f"{r.module}.{r.function}") else r
        for r in roots
    }


def stage_inputs(root: str, stage: str) -> dict:
    """Everything that decides the stage's image, as {name: sha256 or value} (the tag hashes it)."""
    src = os.path.join(root, "src")
    dockerfile = os.path.join(root, "Dockerfiles", f"{stage}.Dockerfile")
    pipelines = sorted(
        os.path.join(root, "pipelines", f) for f in os.listdir(os.path.join(root, "pipelines")) if f.endswith(".py")
    )
    roots = dockerfile_roots(dockerfile) | component_roots(pipelines).get(stage, set())
    files = import_closure(src, _resolve_function_roots(src, roots))
    try:  # imported here: the rest of this module also runs on Python 3.10, which has no tomllib
        import tomllib
    except ModuleNotFoundError:
        raise RuntimeError("image tags read pyproject.toml with tomllib: run them with Python >= 3.11") from None
    version = tomllib.load(open(os.path.join(root, "pyproject.toml"), "rb"))["project"]["version"]
    locks = dockerfile_locks(dockerfile)
    if not locks:
        raise ValueError(f"{dockerfile}: installs from no lockfile (COPY locks/<image>.txt)")

    def digest(path: str) -> str:
        return hashlib.sha256(open(path, "rb").read()).hexdigest()

    return {
        "dockerfile": digest(dockerfile),
        "version": version,
        "bases": dockerfile_bases(dockerfile),
        "locks": {lock: digest(os.path.join(root, lock)) for lock in locks},
        "sources": {rel: digest(os.path.join(src, rel)) for rel in sorted(files)},
    }


def stage_tag(root: str, stage: str) -> str:
    inputs = stage_inputs(root, stage)
    blob = json.dumps(inputs, sort_keys=True).encode()
    return f"{inputs['version']}-{hashlib.sha256(blob).hexdigest()[:12]}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m clipdpo.cluster.imagetags",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--root", default=".", help="repository root")
    parser.add_argument("--stage", choices=STAGES, help="print this stage's tag only")
    parser.add_argument("--json", action="store_true", help="a JSON object (CLIPDPO_IMAGE_TAGS)")
    parser.add_argument("--explain", action="store_true", help="print what goes into each tag")
    args = parser.parse_args(argv)
    if args.stage:
        print(stage_tag(args.root, args.stage))
    elif args.explain:
        print(json.dumps({s: stage_inputs(args.root, s) for s in STAGES}, indent=1, sort_keys=True))
    elif args.json:
        print(json.dumps({s: stage_tag(args.root, s) for s in STAGES}, sort_keys=True))
    else:
        for stage in STAGES:
            print(f"{stage}={stage_tag(args.root, stage)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
