"""scripts/install_venv.py: pip's configured package sources reach uv as flags."""

from __future__ import annotations

from pathlib import Path

from file_module import load_file_module

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "install_venv.py"


def load():
    return load_file_module("install_venv", SCRIPT)


def test_pip_config_becomes_uv_flags_each_source_once():
    listed = (
        ":env:.find-links='/opt/wheels'\n"
        ":env:.default-timeout='180'\n"
        "global.constraint='/etc/xdg/pip/constraints.txt'\n"
        "global.extra-index-url='file:///opt/pypi/simple file:///opt/pypi-more/simple'\n"
        "global.find-links='/opt/wheels'\n"
        "user.index-url='https://mirror.example/simple'\n"
    )
    assert load().uv_flags(listed) == [
        "--find-links",
        "/opt/wheels",
        "--constraint",
        "/etc/xdg/pip/constraints.txt",
        "--extra-index-url",
        "file:///opt/pypi/simple",
        "--extra-index-url",
        "file:///opt/pypi-more/simple",
        "--index-url",
        "https://mirror.example/simple",
        "--index-strategy",
        "unsafe-best-match",
    ]


def test_no_pip_config_leaves_uv_its_defaults():
    assert load().uv_flags("") == ["--index-strategy", "unsafe-best-match"]


def test_the_venv_holds_the_bytecode_of_what_every_step_imports():
    """uv's --compile-bytecode: where PYTHONDONTWRITEBYTECODE is set, a package without its .pyc files is compiled
    from source again in every process that imports it (seconds per kfp step and training process)."""
    import importlib.util

    import kfp
    import torch
    import transformers

    for module in (torch, transformers, kfp):
        cached = importlib.util.cache_from_source(module.__file__)
        assert Path(cached).is_file(), f"{module.__name__}: no bytecode at {cached} (install without compiling)"
