"""Every config of a run is parsed into its typed class before anything runs: a typo in a key, a bad type or a
value out of range fails at submit with one line and exit 2, locally (no S3 server started, no pipeline run) and
in cluster mode (nothing compiled, no client made)."""

from __future__ import annotations

import json

import pytest

import pipelines.run as run


def untouchable(what: str):
    def refuse(*args, **kwargs):
        raise AssertionError(f"{what} was reached: the config error should have stopped the run first")

    return refuse


@pytest.fixture()
def no_side_effects(monkeypatch):
    """Starting the S3 server, running or compiling the pipeline, or making a kfp client fails the test."""
    import kfp

    from clipdpo import s3server

    monkeypatch.setattr(s3server, "start", untouchable("the S3 server"))
    monkeypatch.setattr(run, "run_local", untouchable("the local run"))
    monkeypatch.setattr(kfp, "Client", untouchable("kfp.Client"))
    import pipelines.compile as compile_module

    monkeypatch.setattr(compile_module, "compile_pipeline", untouchable("the compiler"))


def test_a_config_typo_fails_before_the_local_run(tmp_path, monkeypatch, capsys, no_side_effects):
    monkeypatch.delenv("KFP_HOST", raising=False)
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "filter.json").write_text("{}")
    code = run.main(
        [
            "--config-dir",
            str(tmp_path / "configs"),
            "--state-dir",
            str(tmp_path / "state"),
            "--set",
            "filter.pair_min_margn=3",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "--set filter.pair_min_margn=3: unknown key" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_a_config_typo_fails_before_the_cluster_submit(tmp_path, monkeypatch, capsys, no_side_effects):
    monkeypatch.setenv("KFP_HOST", "http://kfp.example")
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "train.json").write_text(json.dumps({"beta": "high"}))  # a bad type in a file
    code = run.main(["--config-dir", str(tmp_path / "configs"), "--bucket", "b"])
    err = capsys.readouterr().err
    assert code == 2 and "train_config.beta" in err and "Traceback" not in err
    code = run.main(
        [
            "--config-dir",
            str(tmp_path / "configs"),
            "--bucket",
            "b",
            "--set",
            "train.beta=0.1",
            "--set",
            "filter.pair_min_margn=3",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "pair_min_margn" in err


@pytest.mark.parametrize("given", ["--runtime=Runtime/clipdpo-torch", "env"])
def test_a_bad_train_runtime_fails_before_the_cluster_submit(given, monkeypatch, capsys, no_side_effects):
    monkeypatch.setenv("KFP_HOST", "http://kfp.example")
    monkeypatch.setenv("CLIPDPO_TRAIN_RUNTIME", "Runtime/clipdpo-torch" if given == "env" else "torch-distributed")
    with pytest.raises(SystemExit) as stopped:
        run.main(["--bucket", "b"] + ([given] if given != "env" else []))
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and "runtime 'Runtime/clipdpo-torch': expected <name>" in err
    assert "Traceback" not in err


def test_povid_config_is_checked_only_where_the_method_reads_it():
    from clipdpo.config import ConfigError
    from clipdpo.stages import validate

    validate({"povid": {"source": "llm"}})  # method clipdpo: POVID's config is not read, so not checked
    with pytest.raises(ConfigError, match="povid_config"):
        validate({"train": {"method": "povid"}, "povid": {"source": "llm"}})  # no ground_truth
    with pytest.raises(ConfigError, match="unknown name"):
        validate({"filtr": {}})


def test_every_stage_names_a_config_class():
    import dataclasses

    from clipdpo.stages import CONFIG_NAMES, config_class

    assert all(dataclasses.is_dataclass(config_class(name)) for name in CONFIG_NAMES)


def test_the_production_configs_validate():
    """configs/cluster passes the submit check as it is (the demo's is checked by every local demo run)."""
    from pathlib import Path

    from clipdpo.stages import validate

    validate(run.read_configs(Path(__file__).resolve().parents[2] / "configs" / "cluster"))
