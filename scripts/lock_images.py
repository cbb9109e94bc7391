"""Regenerate the stage images' lockfiles, locks/<image>.txt: every package an image installs, pinned with its
sha256 hashes, resolved once for the images' platform (CPython 3.11, x86_64 Linux, glibc >= 2.28) from
pyproject.toml's pins and the extras the image needs; for the vLLM images with vllm==0.33.0 and the four pins
vLLM overrides (locks/vllm-overrides.txt). The Dockerfiles install them with --require-hashes, and each
image's content tag hashes its lockfile (clipdpo.cluster.imagetags).

    python scripts/lock_images.py [image ...]     needs uv (pip install uv==0.13.9) on PATH, or UV=/path/to/uv

Run it after changing a pin in pyproject.toml; tests/project/test_dockerfiles.py checks every lock still agrees.
Standard library only.
"""

from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VLLM_INPUT = "locks/vllm.in"
VLLM_OVERRIDES = "locks/vllm-overrides.txt"


# image -> (pyproject extras, extra inputs, overrides file or "")
LOCKS: dict[str, tuple[tuple[str, ...], tuple[str, ...], str]] = {
    "filter": ((), (), ""),
    "score": (("eval",), (), ""),  # spaCy for the noun-level judge's object phrases
    "train": (("deepspeed", "tracking"), (), ""),
    "generate": ((), (VLLM_INPUT,), VLLM_OVERRIDES),
    "evaluate": (("eval", "tracking"), (VLLM_INPUT,), VLLM_OVERRIDES),
}


def compile_command(uv: str, image: str) -> list[str]:
    extras, inputs, overrides = LOCKS[image]
    command = [
        uv,
        "pip",
        "compile",
        "--quiet",
        "--generate-hashes",
        "--python-version",
        "3.11",
        "--python-platform",
        "x86_64-manylinux_2_28",
        "--custom-compile-command",
        f"python scripts/lock_images.py {image}",
        "pyproject.toml",
        *inputs,
    ]
    for extra in extras:
        command += ["--extra", extra]
    if overrides:
        command += ["--overrides", overrides]
    return command + ["-o", f"locks/{image}.txt"]


def main(argv: list[str]) -> int:
    images = argv or list(LOCKS)
    unknown = [image for image in images if image not in LOCKS]
    if unknown:
        print(f"unknown image(s) {unknown}; expected some of {list(LOCKS)}", file=sys.stderr)
        return 2
    uv = os.environ.get("UV", "uv")
    for image in images:
        subprocess.run(compile_command(uv, image), cwd=ROOT, check=True)
        print(f"locks/{image}.txt written")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
