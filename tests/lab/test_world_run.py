"""`python -m clipdpo_lab run --world SEED [--control shuffled]`: the world's local run takes the world's stage
configs and names the compared models base / clipdpo (/ control). Build-free: a world is found in the cache by
its key and `world.json`, so a cache folder holding only that file stands in for a built world here (the
stages never run)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def fake_built_world(cache: Path, seed: int) -> Path:
    """A cache entry the world build accepts as finished (only world.json: no stage reads the files here)."""
    from clipdpo_world.build import WORLD_FILE, WorldConfig, world_key

    root = cache / f"world{seed}-{world_key(WorldConfig(seed=seed))}"
    root.mkdir(parents=True)
    (root / WORLD_FILE).write_text(json.dumps({"checks": {"clip": {"pairwise_accuracy": 0.95}}}))
    return root


@pytest.fixture(autouse=True)
def qa_writer_stub(monkeypatch):
    """The world run asks for the world's QA writer by default; training one is the QA writer tests' business."""
    from clipdpo_world import stageconfigs

    on = {"enabled": True, "model": {"name": "world-qa-writer", "path": "/w/qa-writer-stub"}}
    monkeypatch.setattr(stageconfigs, "world_qa_config", lambda world_root, say=print: on)


def parse(argv: list[str], monkeypatch):
    from clipdpo_lab import run

    monkeypatch.delenv("KFP_HOST", raising=False)
    return run.parse(argv)


def local_configs(args, state: Path) -> dict:
    """The lab's configs of a world run (the stage configs, the arms' train base and train overrides)."""
    from clipdpo_lab.run import local_run

    args.state_dir = str(state)
    _, lab = local_run(args)
    return lab


def test_world_flag_selects_the_world_configs_and_names_base_and_clipdpo(tmp_path, monkeypatch):
    import torch

    from clipdpo.steps import artifact_uri
    from pipelines.run import pipeline_arguments

    for name in ("CLIPDPO_WORLD", "CLIPDPO_CONTROL", "CLIPDPO_WORLD_CACHE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", str(torch.get_num_threads()))  # keep this process's threads as they are
    root = fake_built_world(tmp_path / "cache", seed=5)
    args = parse(["--world", "5", "--world-cache", str(tmp_path / "cache"), "--run-id", "w5"], monkeypatch)
    configs = local_configs(args, tmp_path / "state")
    assert configs["ingest"]["source"] == str(root.resolve() / "images")
    assert configs["generate"]["captioners"][0]["path"] == str(root.resolve() / "lvlm")
    assert configs["score"]["model_config_dir"] == str(root.resolve() / "clip")
    assert configs["train"]["model"] == str(root.resolve() / "lvlm")
    assert configs["evaluate"]["engine"] == "hf"
    assert configs["evaluate"]["amber"]["root"].startswith(str(root.resolve() / "benchmarks"))
    run_root = "s3://clipdpo-local/runs/w5"
    models = configs["evaluate"]["models"]
    assert [m["name"] for m in models] == ["base", "clipdpo"]
    assert models[0]["path"] == str(root.resolve() / "lvlm")
    assert models[1]["path"] == artifact_uri(run_root, "train") + "/model"  # the model this run trains
    assert pipeline_arguments(args, configs, "local")["source"] == configs["ingest"]["source"]
    assert not (tmp_path / "state" / "configs").exists()  # the demo configs were not written
    assert args.control is None


def test_control_adds_the_control_model_and_needs_a_world(tmp_path, monkeypatch):
    from clipdpo_lab.arms import control_root, evaluate_models

    monkeypatch.delenv("CLIPDPO_WORLD", raising=False)
    monkeypatch.setenv("CLIPDPO_CONTROL", "shuffled")
    assert parse([], monkeypatch).world == 0  # the lab's run is on world 0 unless told otherwise
    monkeypatch.setenv("CLIPDPO_WORLD", "2")
    args = parse([], monkeypatch)
    assert (args.world, args.control) == (2, "shuffled")
    models = evaluate_models("/w/lvlm", "s3://b/runs/r", control=True)
    assert [m["name"] for m in models] == ["base", "clipdpo", "control"]
    assert models[2]["path"] == "s3://b/runs/r-control/model/model" == control_root("s3://b/runs/r") + "/model/model"


def test_product_run_has_no_world_flags(monkeypatch):
    """`python -m pipelines.run` is the product's: the demo or --config-dir locally, the cluster with KFP_HOST; the
    world's flags are the lab's (`python -m clipdpo_lab run`)."""
    import pipelines.run as run

    parser = run.build_parser()
    for flag in ("--world", "--control", "--method", "--arms", "--qa"):
        with pytest.raises(SystemExit):
            parser.parse_args([flag, "1"])


def make_command(*assignments: str, kfp_host: str = "") -> list[str]:
    """The runner `make pipeline-run` would call and its arguments (make -n: prints, runs nothing)."""
    import os
    import shlex
    import subprocess

    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("KFP_HOST", "WORLD", "DEMO", "CONTROL", "RUN_ID", "METHOD", "ARMS", "QA", "ROUNDS")
    }
    env.update({"KFP_HOST": kfp_host} if kfp_host else {})
    out = subprocess.run(
        ["make", "-n", "-s", "pipeline-run", *assignments],
        cwd=Path(__file__).resolve().parents[2],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    words = shlex.split(out.replace("\\\n", " "))
    start = max(n for n, word in enumerate(words) if word == "-m") + 1  # the run's (after any venv set-up)
    runner = words[start : start + (2 if words[start] == "clipdpo_lab" else 1)]
    return [" ".join(runner), *words[start + len(runner) :]]


def test_make_pipeline_run_defaults_to_world_0_and_the_demo_is_one_switch_away():
    lab = "clipdpo_lab run"
    assert make_command() == [lab, "--run-id", "world0", "--world", "0", "--qa"]
    assert make_command("WORLD=2", "CONTROL=shuffled") == [
        lab,
        "--run-id",
        "world2",
        "--world",
        "2",
        "--qa",
        "--control",
        "shuffled",
    ]
    assert make_command("DEMO=1") == ["pipelines.run", "--run-id", "demo"]
    # a cluster run takes its configs from CLIPDPO_CONFIG_DIR: no world is built for it
    assert make_command(kfp_host="http://kfp.example") == ["pipelines.run", "--run-id", "demo"]


def test_method_and_arms_name_every_model_and_the_method_reaches_train(tmp_path, monkeypatch):
    """--method povid: the pipeline's train config trains POVID (its two stages, a reference model) on the POVID
    source of the world; --arms adds the others after it, each named by its arm, all in one report."""
    import torch

    from clipdpo_lab.arms import evaluate_models
    from clipdpo_lab.run import extra_arms
    from pipelines.run import pipeline_arguments

    for name in ("CLIPDPO_WORLD", "CLIPDPO_CONTROL", "CLIPDPO_WORLD_CACHE", "CLIPDPO_METHOD", "CLIPDPO_ARMS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", str(torch.get_num_threads()))
    root = fake_built_world(tmp_path / "cache", seed=4)
    args = parse(
        [
            "--world",
            "4",
            "--world-cache",
            str(tmp_path / "cache"),
            "--method",
            "povid",
            "--arms",
            "clipdpo,povid,both,control",
        ],
        monkeypatch,
    )
    assert extra_arms(args) == ("clipdpo", "both", "control")  # the pipeline's own method is not trained twice
    configs = local_configs(args, tmp_path / "state")
    train = configs["train"]
    assert (train["method"], train["reference"], train["povid"]["stage1_epochs"], train["povid"]["stage2_epochs"]) == (
        "povid",
        "model",
        3,
        1,
    )
    assert train["povid"]["noise_step"] == 500 and train["model"] == str(root.resolve() / "lvlm")
    assert configs["world_train"]["epochs"] == 2 and "method" not in configs["world_train"]  # the CLIP-DPO arm's
    assert configs["povid"] == {
        "source": "plugin",
        "rewriter": "clipdpo_world.povid_source:rewriter",
        "ground_truth": str(root.resolve() / "images"),
        "seed": 4,
    }
    arguments = pipeline_arguments(args, configs, "local")
    assert json.loads(arguments["train_config"])["method"] == "povid"
    assert json.loads(arguments["povid_config"])["source"] == "plugin"
    assert [m["name"] for m in configs["evaluate"]["models"]] == ["base", "povid"]
    models = evaluate_models("/w/lvlm", "s3://b/runs/r", method="povid", arms=extra_arms(args))
    assert [(m["name"], m["path"]) for m in models] == [
        ("base", "/w/lvlm"),
        ("povid", "s3://b/runs/r/model/model"),
        ("clipdpo", "s3://b/runs/r-clipdpo/model/model"),
        ("both", "s3://b/runs/r-both/model/model"),
        ("control", "s3://b/runs/r-control/model/model"),
    ]
    with pytest.raises(SystemExit):  # an arm the world does not know
        parse(["--world", "4", "--arms", "clipdpo,dpo"], monkeypatch)
    with pytest.raises(SystemExit):  # a method the world does not know
        parse(["--method", "dpo"], monkeypatch)


def test_make_pipeline_run_passes_method_and_arms_on_the_world_only():
    lab = "clipdpo_lab run"
    method = [lab, "--run-id", "world2", "--world", "2", "--method", "povid", "--qa"]
    assert make_command("WORLD=2", "METHOD=povid") == method
    assert make_command("ARMS=clipdpo,povid,both,control") == [
        lab,
        "--run-id",
        "world0",
        "--world",
        "0",
        "--arms",
        "clipdpo,povid,both,control",
        "--qa",
    ]
    assert make_command("DEMO=1", "METHOD=povid") == ["pipelines.run", "--run-id", "demo"]  # the arms are the world's


def test_make_pipeline_run_passes_rounds_to_every_run():
    world = make_command("ROUNDS=3")
    assert world[0] == "clipdpo_lab run" and world[-2:] == ["--rounds", "3"] and world.count("--rounds") == 1
    assert "--rounds" not in make_command() and "--rounds" not in make_command("DEMO=1")  # unset: the runs' 1
    assert make_command("DEMO=1", "ROUNDS=2") == ["pipelines.run", "--run-id", "demo", "--rounds", "2"]
    assert make_command("ROUNDS=2", kfp_host="http://kfp.example") == [
        "pipelines.run",
        "--run-id",
        "demo",
        "--rounds",
        "2",
    ]


def test_rounds_run_on_the_world_without_arms(tmp_path, monkeypatch):
    """--rounds reaches the world run (the product's flag); the arms are compared with round 1's model, so they
    are refused with several rounds."""
    from clipdpo_lab.run import parse

    monkeypatch.delenv("KFP_HOST", raising=False)
    assert parse(["--rounds", "3"]).rounds == 3 and parse([]).rounds == 1
    for flags in (["--arms", "povid"], ["--control", "shuffled"]):
        with pytest.raises(SystemExit):
            parse(["--rounds", "2", *flags])
    assert parse(["--rounds", "2", "--arms", "clipdpo"]).rounds == 2  # the pipeline's own method: no extra arm
    with pytest.raises(SystemExit):
        parse(["--rounds", "0"])


def test_train_overrides_reach_every_arm_on_top_of_its_method(tmp_path, monkeypatch):
    """--set train.KEY=VALUE changes the pipeline's train config and, through arm_train_config, the train config
    of every arm trained after it (each built from the world's train config for its method), the override
    winning over the method's own value."""
    import torch

    from clipdpo_lab.arms import arm_train_config
    from pipelines.run import pipeline_arguments

    for name in ("CLIPDPO_WORLD", "CLIPDPO_CONTROL", "CLIPDPO_WORLD_CACHE", "CLIPDPO_METHOD", "CLIPDPO_ARMS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", str(torch.get_num_threads()))
    fake_built_world(tmp_path / "cache", seed=4)
    world = [
        "--world",
        "4",
        "--world-cache",
        str(tmp_path / "cache"),
        "--method",
        "povid",
        "--arms",
        "clipdpo,povid,both,control",
    ]
    sets = ["train.learning_rate=2e-5", "train.povid.stage1_epochs=2", "filter.pair_min_margin=3"]
    args = parse([*world, *(word for item in sets for word in ("--set", item))], monkeypatch)
    configs = local_configs(args, tmp_path / "state")
    plain = local_configs(parse(world, monkeypatch), tmp_path / "state")
    assert arm_train_config(configs, "povid") == configs["train"]  # the pipeline's own arm: its very config
    assert configs["train"]["learning_rate"] == 2e-5 and configs["train"]["povid"]["stage1_epochs"] == 2
    for arm in ("clipdpo", "both", "control"):
        train = arm_train_config(configs, arm)
        assert (train["learning_rate"], train["povid"]["stage1_epochs"]) == (2e-5, 2), arm
        # the rest is the arm's method's: both keeps POVID's schedule, clipdpo and control the world's
        assert train.get("method", "clipdpo") == ("clipdpo" if arm == "control" else arm)
        assert train["epochs"] == (1 if arm == "both" else 2)
    assert configs["filter"]["pair_min_margin"] == 3  # the control arm filters with the run's filter config
    # without --set each arm keeps its method's values (POVID 1e-5, the world's CLIP-DPO 5e-5)
    assert [arm_train_config(plain, arm)["learning_rate"] for arm in ("povid", "both", "clipdpo", "control")] == [
        1e-5,
        1e-5,
        5e-5,
        5e-5,
    ]
    # the lab's own keys are not pipeline parameters: the product sees only its configs
    assert set(pipeline_arguments(args, configs, "local")) == set(pipeline_arguments(args, plain, "local"))
    assert not {"world_train", "train_overrides"} & {
        key.removesuffix("_config") for key in pipeline_arguments(args, configs, "local")
    }
    with pytest.raises(SystemExit):  # on the world, --method and --arms say which methods train
        parse([*world, "--set", "train.method=both"], monkeypatch)


def test_povid_text_arm_is_povid_without_the_noisy_image_term():
    """POVID's Table 3 ablation as an arm: POVID's train config with beta_2 = 0 and nothing else changed."""
    from clipdpo_lab.arms import ARMS, arm_root, arm_train_config
    from clipdpo_world.stageconfigs import method_train_config

    world_train = {"model": "/w/lvlm", "learning_rate": 5e-5, "epochs": 2, "beta": 0.1}
    configs = {"world_train": world_train}
    povid, text_only = arm_train_config(configs, "povid"), arm_train_config(configs, "povid_text")
    assert povid == method_train_config(world_train, "povid") and povid["povid"]["beta_2"] > 0
    # one setting of the nested povid config changed, its others (alpha, beta_1, the schedule) kept
    assert text_only == {**povid, "povid": {**povid["povid"], "beta_2": 0.0}}
    assert method_train_config(world_train, "povid")["povid"]["beta_2"] > 0  # the world's constant left alone
    assert "povid_text" in ARMS and arm_root("s3://b/runs/r", "povid_text") == "s3://b/runs/r-povid_text"


def test_qa_is_a_world_switch_on_by_default(tmp_path, monkeypatch):
    """The world run takes the paper's QA path by default (generate's QA config from the world's QA writer);
    --no-qa (make QA=0, CLIPDPO_WORLD_QA=0) leaves it out; the demo and the cluster have no such switch."""
    import torch

    from clipdpo_world import stageconfigs

    for name in ("CLIPDPO_WORLD", "CLIPDPO_CONTROL", "CLIPDPO_WORLD_CACHE", "CLIPDPO_WORLD_QA"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", str(torch.get_num_threads()))  # keep this process's threads as they are
    root = fake_built_world(tmp_path / "cache", seed=6)
    argv = ["--world", "6", "--world-cache", str(tmp_path / "cache")]
    asked = []  # the writer's training is the QA writer tests' business: here, which world it is asked for
    on = {"enabled": True, "model": {"name": "world-qa-writer", "path": "/w/qa-writer-x"}}
    monkeypatch.setattr(stageconfigs, "world_qa_config", lambda world_root, say=print: asked.append(world_root) or on)
    configs = local_configs(parse(argv, monkeypatch), tmp_path / "state")
    assert asked == [str(root.resolve())] and configs["generate"]["qa"]["enabled"]
    configs = local_configs(parse([*argv, "--no-qa"], monkeypatch), tmp_path / "state")
    assert configs["generate"]["qa"] == {"enabled": False} and len(asked) == 1
    monkeypatch.setenv("CLIPDPO_WORLD_QA", "0")
    assert not parse(argv, monkeypatch).qa
    assert make_command("QA=0") == ["clipdpo_lab run", "--run-id", "world0", "--world", "0", "--no-qa"]
    assert make_command("DEMO=1", "QA=0") == ["pipelines.run", "--run-id", "demo"]
