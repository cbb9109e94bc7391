"""Install the project into a virtualenv with uv, which reads pip's configured sources; pip if uv cannot.

`make` calls it with the venv's python. uv installs the ML stack (torch, deepspeed, vllm's CPU-free deps)
several times faster than pip, but it does not read pip's configuration: machines that serve wheels from
local folders or mirrors say so in pip's config (`pip config list`: find-links, index-url, extra-index-url,
constraint), so those are passed on as uv flags. Whatever goes wrong with uv, pip installs as before.

uv writes the installed packages' bytecode (`--compile-bytecode`, as pip does by default). Without it, a
machine that sets PYTHONDONTWRITEBYTECODE (this project's CI and development machines do) compiles torch's,
transformers' and kfp's sources again in every process that imports them: measured on a 2-core AMD EPYC, a
demo generate shard took 16.4 s, 9 s of it `compile()`, and 6.7 s with the bytecode; `import kfp.dsl` 2.1 s ->
0.9 s, `import torch` 4.6 s -> 2.5 s. Every kfp step and every training process of a local run and of the test
suite is such a process. The compile costs ~50 s once, at install.

    python3 scripts/install_venv.py .venv/bin/python '.[dev]'
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys

UV = "uv==0.13.9"  # pinned: the version measured here (2026-11-30)
# pip config keys -> uv flags (the values of find-links and the index URLs may list several, space-separated)
FLAGS = {
    "find-links": "--find-links",
    "index-url": "--index-url",
    "extra-index-url": "--extra-index-url",
    "constraint": "--constraint",
}


def pip_sources(python: str) -> list[str]:
    """uv flags for the package sources in pip's configuration (every scope, environment variables included)."""
    listed = subprocess.run([python, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
    return uv_flags(listed)


def uv_flags(pip_config_list: str) -> list[str]:
    """`pip config list` output (`scope.key='value'` lines) -> uv flags, each source once, in pip's order."""
    pairs: list[tuple[str, str]] = []
    for line in pip_config_list.splitlines():
        name, _, value = line.partition("=")
        key = name.rsplit(".", 1)[-1]
        if key in FLAGS:
            pairs += [
                (FLAGS[key], item)
                for item in shlex.split(value.strip().strip("'\""))
                if (FLAGS[key], item) not in pairs
            ]
    # pip takes the best version over all indexes; uv's default stops at the first index that has the package
    return [part for pair in pairs for part in pair] + ["--index-strategy", "unsafe-best-match"]


def main(python: str, target: str) -> int:
    env = {**os.environ, "DS_BUILD_OPS": "0"}  # deepspeed: no op builds at install (they build lazily on GPU)
    pip = [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    if subprocess.run(pip + [UV], env=env).returncode == 0:
        uv = os.path.join(os.path.dirname(python), "uv")
        command = [uv, "pip", "install", "--quiet", "--compile-bytecode", "--python", python]
        command += [*pip_sources(python), "-e", target]
        if subprocess.run(command, env=env).returncode == 0:
            return 0
        print(f"install_venv: uv failed ({shlex.join(command)}); installing with pip", file=sys.stderr)
    return subprocess.run(pip + ["-e", target], env=env).returncode


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: install_venv.py VENV_PYTHON TARGET (e.g. .venv/bin/python '.[dev]')")
    sys.exit(main(sys.argv[1], sys.argv[2]))
