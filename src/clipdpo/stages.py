"""The pipeline's stages, in order: the one list every other place (steps, pipeline, local run,
image settings, the Makefile, tests) derives its stage names, artifacts and images from.

Kept free of third-party imports: the Makefile reads it with a bare `python3`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Stage:
    name: str  # the package clipdpo.<name> and its `python -m` entry point
    artifact: str  # its output under a run root
    input: str | None = None  # the stage whose artifact it reads
    image: str = ""  # the container image it runs in; default: its own (clipdpo-<name>)
    config: str = ""  # "module:Class" of its typed config, resolved lazily (this module imports nothing)

    @property
    def image_name(self) -> str:
        return self.image or self.name


STAGES = (
    # CPU file reading: the light filter image, not the vLLM one
    Stage("ingest", "images", image="filter", config="clipdpo.ingest:IngestConfig"),
    Stage("generate", "candidates", input="ingest", config="clipdpo.generate.config:GenerateConfig"),
    Stage("score", "scores", input="generate", config="clipdpo.score.scorer:ScorerConfig"),
    Stage("filter", "pairs", input="score", config="clipdpo.filter.select:FilterConfig"),
    Stage("train", "model", input="filter", config="clipdpo.train.config:TrainConfig"),
    Stage("evaluate", "evaluation", input="train", config="clipdpo.evaluate.config:EvaluateConfig"),
)
# Configs a run takes beside the stages': the promotion gate's rules and POVID's pairs source (read only when
# the train config's method is povid or both).
EXTRA_CONFIGS = {"gate": "clipdpo.gate:GateConfig", "povid": "clipdpo.generate.povid_source:PovidSourceConfig"}
CONFIG_NAMES = (*(s.name for s in STAGES), *EXTRA_CONFIGS)
NAMES = tuple(stage.name for stage in STAGES)
IMAGES = tuple(dict.fromkeys(stage.image_name for stage in STAGES))  # each built once, in stage order


def stage(name: str) -> Stage:
    for candidate in STAGES:
        if candidate.name == name:
            return candidate
    raise ValueError(f"unknown stage {name!r}; stages: {NAMES}")


def config_class(name: str) -> type:
    """The typed config class of stage (or extra config) `name`."""
    import importlib

    target = stage(name).config if name not in EXTRA_CONFIGS else EXTRA_CONFIGS[name]
    module, attribute = target.split(":")
    return getattr(importlib.import_module(module), attribute)


def checked(name: str, config: dict, overrides: list[str] | tuple[str, ...] = ()):
    """Config `name` parsed into its class as its step will parse it. `overrides`: the run's `--set` items, already
    applied to `config` (those of other configs are ignored); an unknown key or a bad value one of them set is
    blamed on that item, any other on `<name>_config`."""
    from clipdpo import config as config_lib

    cls = config_class(name)
    mine = [item for item in overrides if item.startswith(f"{name}.")]
    for item in mine:
        config_lib.check_override_key(cls, item, prefix=f"{name}.")
    return config_lib.build(cls, config, f"{name}_config", mine, prefix=f"{name}.")


def validate(configs: dict[str, dict], overrides: list[str] | tuple[str, ...] = (), rounds: int = 1) -> None:
    """Parse every config of a run into its typed class, before anything is compiled, submitted or run: an unknown
    key, a bad type or a value out of range fails here (clipdpo.config.ConfigError naming `<name>_config.<key>`,
    or the `--set` item that set it). POVID's source config is checked only where the train config's method
    reads it; the evaluate config as its step completes it (without `models`: the run's base and trained model).
    `rounds` > 1 (clipdpo.rounds): a LoRA run must save the merged model, which the next round starts from."""
    from clipdpo.config import ConfigError

    unknown = sorted(set(configs) - set(CONFIG_NAMES))
    if unknown:
        raise ConfigError(f"configs: unknown name(s) {unknown}; expected some of {list(CONFIG_NAMES)}")
    for name, body in configs.items():
        if not isinstance(body, dict):
            raise ConfigError(f"{name}_config: must be a JSON object, got {type(body).__name__}")
    # name -> its own config class's instance (config_class(name)): the value type differs by name
    typed: dict[str, Any] = {
        name: checked(name, configs.get(name) or {}, overrides)
        for name in CONFIG_NAMES
        if name not in ("evaluate", "povid")
    }
    evaluate = dict(configs.get("evaluate") or {})
    if evaluate:  # empty: no evaluation
        engine = evaluate.get("engine", "vllm")
        evaluate.setdefault(
            "models",
            [
                {"name": "base", "path": typed["train"].model, "engine": engine},
                {"name": "trained", "path": "<the run's model>", "engine": engine},
            ],
        )
        checked("evaluate", evaluate, overrides)
    if typed["train"].method != "clipdpo":
        checked("povid", configs.get("povid") or {}, overrides)
    from clipdpo.train.config import check_rounds

    check_rounds(typed["train"], rounds)


if __name__ == "__main__":  # `python -m clipdpo.stages images`: what the Makefile builds
    import sys

    print(" ".join(IMAGES if sys.argv[1:] == ["images"] else NAMES))
