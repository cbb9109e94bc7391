"""A Python file outside any package (scripts/, benchmarks/) as a module the tests can call into."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType


def load_file_module(name: str, path: Path) -> ModuleType:
    """`path` loaded once as module `name`; registered in sys.modules first, as dataclasses look their module up
    while the file runs."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None, path
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]
