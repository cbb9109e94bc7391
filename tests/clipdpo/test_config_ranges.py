"""Every numeric value of every config parsed from JSON has a declared range, checked at parse: NaN, inf,
negatives where meaningless, shares outside [0, 1] and counts below 1 fail before anything runs, naming
the field and the --set item (or file) that set it. No manifest ever holds a bare NaN."""

from __future__ import annotations

import dataclasses
import json
import math
import typing

import pytest

from clipdpo import config as config_lib
from clipdpo.config import ConfigError


def root_configs():
    """(config class, the smallest valid JSON for it): every config a stage, the gate or POVID parses."""
    from clipdpo.evaluate.config import EvaluateConfig
    from clipdpo.filter import FilterConfig
    from clipdpo.gate import GateConfig
    from clipdpo.generate import GenerateConfig
    from clipdpo.generate.povid_source import PovidSourceConfig
    from clipdpo.ingest import IngestConfig
    from clipdpo.score.scorer import ScorerConfig
    from clipdpo.train.config import TrainConfig

    every_evaluation = {
        "models": [{"name": "base", "path": "org/m", "engine": "hf"}],
        "amber": {"root": "amber"},
        "zero_shot": {"datasets": [{"name": "z", "root": "zs"}]},
        "suite": [{"kind": "pope", "root": "pope"}],
    }
    model = {"name": "m", "path": "org/m"}  # a nested object given in part loses its defaults: name one whole
    return [
        (IngestConfig, {}),
        (GenerateConfig, {"captioners": [model], "qa": {"model": model}}),
        (ScorerConfig, {}),
        (FilterConfig, {}),
        (TrainConfig, {}),
        (EvaluateConfig, every_evaluation),
        (GateConfig, {"rules": [{"metric": "amber.amber_score"}]}),
        (PovidSourceConfig, {"ground_truth": "gt.json", "injector": model}),
    ]


def _dataclass_of(annotation):
    """The config dataclass a field holds (directly, optionally, or as list items), else None."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if dataclasses.is_dataclass(annotation):
        return annotation, False
    if typing.get_origin(annotation) is list and args and dataclasses.is_dataclass(args[0]):
        return args[0], True
    if len(args) == 1 and dataclasses.is_dataclass(args[0]):
        return args[0], False
    return None, False


def numeric_fields(cls, data, path=()):
    """(class, path in the JSON, field name, its type) of every int or float field reachable from `cls`,
    following nested configs and the first item of lists of them (the minimal data has one)."""
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        annotation = hints[field.name]
        inner, listed = _dataclass_of(annotation)
        if inner is not None:
            sub = data.get(field.name)
            if listed:
                if not sub:
                    continue
                yield from numeric_fields(inner, sub[0], (*path, field.name, 0))
            else:
                yield from numeric_fields(inner, sub or {}, (*path, field.name))
        elif annotation in (int, float):
            yield cls, (*path, field.name), field.name, annotation


def every_numeric_field():
    out = []
    for cls, data in root_configs():
        for owner, path, name, kind in numeric_fields(cls, data):
            label = f"{cls.__name__}:{'.'.join(map(str, path))}"
            out.append(pytest.param(cls, data, owner, path, name, kind, id=label))
    return out


FIELDS = every_numeric_field()


def test_the_walk_reaches_every_config_class():
    owners = {param.values[2].__name__ for param in FIELDS}
    assert {
        "IngestConfig",
        "GenerateConfig",
        "QAConfig",
        "ModelSpec",
        "Sampling",
        "ScorerConfig",
        "FilterConfig",
        "TrainConfig",
        "EvaluateConfig",
        "AmberConfig",
        "DecodingConfig",
        "ZeroShotConfig",
        "ZeroShotDataset",
        "TextEncoderConfig",
        "Benchmark",
        "Rule",
        "PovidSourceConfig",
        "PovidTrainConfig",
    } <= owners
    assert len(FIELDS) > 80


@pytest.mark.parametrize("root,data,owner,path,name,kind", FIELDS)
def test_every_numeric_field_declares_its_range(root, data, owner, path, name, kind):
    assert name in getattr(owner, "RANGES", {}), f"{owner.__name__}.{name} has no entry in {owner.__name__}.RANGES"


def bad_values(allowed, kind: type) -> list:
    """Values the range must refuse: just outside each bound, and (floats) NaN and the infinities."""
    step = 1 if kind is int else 1e-9
    out = []
    if allowed.low is not None:
        out.append(allowed.low if allowed.low_open else allowed.low - step)
    if allowed.high is not None:
        out.append(allowed.high if allowed.high_open else allowed.high + step)
    if kind is float:
        out += [math.nan, math.inf, -math.inf]
    return [kind(value) if kind is int else value for value in out]


def _set_at(data, path, value):
    data = json.loads(json.dumps(data))
    target = data
    for part in path[:-1]:
        target = target.setdefault(part, {}) if isinstance(part, str) else target[part]
    target[path[-1]] = value
    return data


@pytest.mark.parametrize("root,data,owner,path,name,kind", FIELDS)
def test_out_of_range_values_fail_at_parse_naming_the_field(root, data, owner, path, name, kind, tmp_path):
    config_lib.from_dict(root, data)  # the minimal data is valid
    values = bad_values(owner.RANGES[name], kind)
    assert values, f"{owner.__name__}.{name}: a range that refuses nothing"
    for value in values:
        with pytest.raises(ConfigError, match=rf"\b{name}\b") as caught:
            config_lib.from_dict(root, _set_at(data, path, value))
        assert "Traceback" not in str(caught.value)
        if all(isinstance(part, str) for part in path):  # --set reaches it: the error names the --set item
            item = f"{'.'.join(path)}={json.dumps(value)}"
            config_file = tmp_path / "config.json"
            config_file.write_text(json.dumps(data))
            with pytest.raises(ConfigError) as caught:
                config_lib.load(root, str(config_file), [item])
            assert str(caught.value).startswith(f"--set {item}: "), str(caught.value)


def test_values_inside_the_ranges_still_parse():
    from clipdpo.filter import FilterConfig
    from clipdpo.train.config import TrainConfig

    cfg = config_lib.load(FilterConfig, None, ["pair_min_margin=0", "text_keep_fraction=1", "caption_min_score=-5"])
    assert (cfg.pair_min_margin, cfg.text_keep_fraction, cfg.caption_min_score) == (0.0, 1.0, -5.0)
    cfg = config_lib.load(
        TrainConfig,
        None,
        ["povid.noise_step=999", "zero_stage=0", "keep_checkpoints=0", "label_smoothing=0.1", "seed=0"],
    )
    assert (cfg.povid.noise_step, cfg.zero_stage, cfg.keep_checkpoints, cfg.label_smoothing) == (999, 0, 0, 0.1)


@pytest.mark.parametrize(
    "item,expected",
    [
        ("pair_min_margin=NaN", "--set pair_min_margin=NaN: pair_min_margin: expected a finite number, got nan"),
        ("pair_min_margin=-Infinity", "--set pair_min_margin=-Infinity: pair_min_margin: expected a finite number"),
        ("pair_min_margin=1e999", "--set pair_min_margin=1e999: pair_min_margin: expected a finite number, got inf"),
        ("pair_min_margin=-0.5", "--set pair_min_margin=-0.5: pair_min_margin must be >= 0, got -0.5"),
    ],
)
def test_the_reported_nan_and_negative_margins_are_refused(item, expected):
    from clipdpo.filter import FilterConfig

    with pytest.raises(ConfigError) as caught:
        config_lib.load(FilterConfig, None, [item])
    assert str(caught.value).startswith(expected), str(caught.value)


def test_a_nan_in_a_config_file_names_the_file(tmp_path):
    from clipdpo.filter import FilterConfig

    path = tmp_path / "filter.json"
    path.write_text('{"pair_min_margin": NaN}')  # Python's json reads the bare NaN; the range check refuses it
    with pytest.raises(ConfigError, match=rf"^{path}.pair_min_margin: expected a finite number, got nan"):
        config_lib.load(FilterConfig, str(path), [])
    assert config_lib.load(FilterConfig, str(path), ["pair_min_margin=1.5"]).pair_min_margin == 1.5


def test_a_constructed_config_is_checked_too():
    from clipdpo.filter import FilterConfig

    with pytest.raises(ValueError, match="pair_min_margin"):
        FilterConfig(pair_min_margin=math.nan)


def test_a_manifest_never_holds_a_bare_nan():
    from clipdpo.artifacts import Manifest, ShardRecord

    manifest = Manifest("pairs", "f" * 64, [ShardRecord("part-00000", 1, "0" * 64, 10)], {"m": 1.0}, [], "0")
    assert json.loads(manifest.to_json())["counts"] == {"rows": 1, "shards": 1}
    with pytest.raises(ValueError):
        Manifest("pairs", "f" * 64, [], {"pair_min_margin": math.nan}, [], "0").to_json()


def test_filter_with_a_nan_margin_writes_nothing(tmp_path, capsys):
    from clipdpo.filter.__main__ import main
    from tests.clipdpo.test_filter_stage import write_scores

    scores = write_scores(tmp_path)
    out = tmp_path / "pairs"
    assert main(["--input", scores, "--output", str(out), "--set", "pair_min_margin=NaN"]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        "error: --set pair_min_margin=NaN: pair_min_margin: expected a finite number, got nan"
    ]
    assert not out.exists()
