"""The pipeline's stages, in order: the one list every other place (steps, pipeline, local run,
image settings, the Makefile, tests) derives its stage names, artifacts and images from.

Kept free of third-party imports: the Makefile reads it with a bare `python3`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Stage:
    name: str  # the package clipdpo.<name> and its `python -m` entry point
    artifact: str  # its output under a run root
    input: str | None = None  # the stage whose artifact it reads
    image: str = ""  # the container image it runs in; default: its own (clipdpo-<name>)

    @property
    def image_name(self) -> str:
        return self.image or self.name


STAGES = (
    Stage("ingest", "images", image="filter"),  # CPU file reading: the light filter image, not the vLLM one
    Stage("generate", "candidates", input="ingest"),
    Stage("score", "scores", input="generate"),
    Stage("filter", "pairs", input="score"),
    Stage("train", "model", input="filter"),
    Stage("evaluate", "evaluation", input="train"),
)
NAMES = tuple(stage.name for stage in STAGES)
IMAGES = tuple(dict.fromkeys(stage.image_name for stage in STAGES))  # each built once, in stage order


def stage(name: str) -> Stage:
    for candidate in STAGES:
        if candidate.name == name:
            return candidate
    raise ValueError(f"unknown stage {name!r}; stages: {NAMES}")


if __name__ == "__main__":  # `python -m clipdpo.stages images`: what the Makefile builds
    import sys

    print(" ".join(IMAGES if sys.argv[1:] == ["images"] else NAMES))
