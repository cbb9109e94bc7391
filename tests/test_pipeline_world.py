"""`python -m pipelines.run --world SEED [--control shuffled]`: the local run takes the world's stage configs
and names the compared models base / clipdpo (/ control). Build-free: a world is found in the cache by its
key and `world.json`, so a cache folder holding only that file stands in for a built world here (the
stages never run); the real world's run is `make pipeline-run WORLD=2`, measured in the README."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def fake_built_world(cache: Path, seed: int) -> Path:
    """A cache entry the world build accepts as finished (only world.json: no stage reads the files here)."""
    from clipdpo.world.build import WORLD_FILE, WorldConfig, world_key

    root = cache / f"world{seed}-{world_key(WorldConfig(seed=seed))}"
    root.mkdir(parents=True)
    (root / WORLD_FILE).write_text(json.dumps({"checks": {"clip": {"pairwise_accuracy": 0.95}}}))
    return root


def parse(argv: list[str], monkeypatch):
    import pipelines.run as run

    seen = {}
    monkeypatch.setattr(run, "run_local", lambda args: seen.setdefault("args", args) and 0)
    monkeypatch.delenv("KFP_HOST", raising=False)
    assert run.main(argv) == 0
    return seen["args"]


def test_world_flag_selects_the_world_configs_and_names_base_and_clipdpo(tmp_path, monkeypatch):
    from clipdpo.steps import artifact_uri
    from pipelines.run import local_configs, pipeline_arguments

    import torch

    for name in ("CLIPDPO_WORLD", "CLIPDPO_CONTROL", "CLIPDPO_WORLD_CACHE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", str(torch.get_num_threads()))  # keep this process's threads as they are
    root = fake_built_world(tmp_path / "cache", seed=5)
    args = parse(["--world", "5", "--world-cache", str(tmp_path / "cache"), "--run-id", "w5"], monkeypatch)
    configs, world = local_configs(args, tmp_path / "state")
    assert world.root == str(root.resolve())
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
    from pipelines.world_run import control_root, evaluate_models

    monkeypatch.delenv("CLIPDPO_WORLD", raising=False)
    monkeypatch.setenv("CLIPDPO_CONTROL", "shuffled")
    with pytest.raises(SystemExit):  # argparse error: the control arm is defined on the world only
        parse([], monkeypatch)
    monkeypatch.setenv("CLIPDPO_WORLD", "2")
    args = parse([], monkeypatch)
    assert (args.world, args.control) == (2, "shuffled")
    models = evaluate_models("/w/lvlm", "s3://b/runs/r", control=True)
    assert [m["name"] for m in models] == ["base", "clipdpo", "control"]
    assert models[2]["path"] == "s3://b/runs/r-control/model/model" == control_root("s3://b/runs/r") + "/model/model"


def test_python_entry_point_without_world_is_the_demo(monkeypatch):
    """`python -m pipelines.run` with no --world stays the demo (the tests and scripts name what they run);
    the world default is `make pipeline-run`'s, below."""
    for name in ("CLIPDPO_WORLD", "CLIPDPO_CONTROL"):
        monkeypatch.delenv(name, raising=False)
    args = parse([], monkeypatch)
    assert args.world is None and args.control is None


def make_command(*assignments: str, kfp_host: str = "") -> list[str]:
    """The pipelines.run arguments `make pipeline-run` would pass (make -n: prints, runs nothing)."""
    import os
    import shlex
    import subprocess

    env = {k: v for k, v in os.environ.items()
           if k not in ("KFP_HOST", "WORLD", "DEMO", "CONTROL", "RUN_ID", "METHOD", "ARMS", "QA")}
    env.update({"KFP_HOST": kfp_host} if kfp_host else {})
    out = subprocess.run(["make", "-n", "-s", "pipeline-run", *assignments], cwd=Path(__file__).resolve().parents[1],
                         env=env, capture_output=True, text=True, check=True).stdout
    words = shlex.split(out.replace("\\\n", " "))
    return words[words.index("pipelines.run") + 1:]


def test_make_pipeline_run_defaults_to_world_0_and_the_demo_is_one_switch_away():
    assert make_command() == ["--run-id", "world0", "--world", "0"]
    assert make_command("WORLD=2", "CONTROL=shuffled") == ["--run-id", "world2", "--world", "2", "--control", "shuffled"]
    assert make_command("DEMO=1") == ["--run-id", "demo"]
    # a cluster run takes its configs from CLIPDPO_CONFIG_DIR: no world is built for it
    assert make_command(kfp_host="http://kfp.example") == ["--run-id", "demo"]


CACHE = Path(__file__).resolve().parents[1] / ".local" / "world"


def built(seed: int) -> bool:
    """World `seed` lies built in the repo's cache under today's key (else world_configs would build it)."""
    from clipdpo.world.build import WORLD_FILE, WorldConfig, world_key

    return (CACHE / f"world{seed}-{world_key(WorldConfig(seed=seed))}" / WORLD_FILE).exists()


def test_built_world_2_configs_point_at_real_files(monkeypatch):
    import torch

    from pipelines.world_run import world_configs

    if not built(2):
        pytest.skip("world 2 is not built in .local/world (make world WORLD_SEED=2); "
                    "the build-free tests cover the wiring")
    monkeypatch.setenv("OMP_NUM_THREADS", str(torch.get_num_threads()))  # keep this process's threads as they are
    configs, world = world_configs(2, str(CACHE), "s3://b/runs/r")
    for path in (configs["ingest"]["source"], configs["train"]["model"], configs["score"]["pretrained"]):
        assert Path(path).exists(), path
    assert world.checks["clip"]["pairwise_accuracy"] >= 0.9


def test_method_and_arms_name_every_model_and_the_method_reaches_train(tmp_path, monkeypatch):
    """--method povid: the pipeline's train config trains POVID (its two stages, a reference model) on the POVID
    source of the world; --arms adds the others after it, each named by its arm, all in one report (#15)."""
    import torch

    from pipelines.run import extra_arms, local_configs, pipeline_arguments
    from pipelines.world_run import evaluate_models

    for name in ("CLIPDPO_WORLD", "CLIPDPO_CONTROL", "CLIPDPO_WORLD_CACHE", "CLIPDPO_METHOD", "CLIPDPO_ARMS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", str(torch.get_num_threads()))
    root = fake_built_world(tmp_path / "cache", seed=4)
    args = parse(["--world", "4", "--world-cache", str(tmp_path / "cache"), "--method", "povid",
                  "--arms", "clipdpo,povid,both,control"], monkeypatch)
    assert extra_arms(args) == ("clipdpo", "both", "control")  # the pipeline's own method is not trained twice
    configs, _ = local_configs(args, tmp_path / "state")
    train = configs["train"]
    assert (train["method"], train["reference"], train["stage1_epochs"], train["stage2_epochs"]) == ("povid", "model",
                                                                                                     3, 1)
    assert train["noise_step"] == 500 and train["model"] == str(root.resolve() / "lvlm")
    assert configs["world_train"]["epochs"] == 2 and "method" not in configs["world_train"]  # the CLIP-DPO arm's
    assert configs["povid"] == {"source": "world", "ground_truth": str(root.resolve() / "images"), "seed": 4}
    arguments = pipeline_arguments(args, configs, "local")
    assert json.loads(arguments["train_config"])["method"] == "povid"
    assert json.loads(arguments["povid_config"])["source"] == "world"
    assert [m["name"] for m in configs["evaluate"]["models"]] == ["base", "povid"]
    models = evaluate_models("/w/lvlm", "s3://b/runs/r", method="povid", arms=extra_arms(args))
    assert [(m["name"], m["path"]) for m in models] == [
        ("base", "/w/lvlm"), ("povid", "s3://b/runs/r/model/model"), ("clipdpo", "s3://b/runs/r-clipdpo/model/model"),
        ("both", "s3://b/runs/r-both/model/model"), ("control", "s3://b/runs/r-control/model/model")]
    with pytest.raises(SystemExit):  # an arm the world does not know
        parse(["--world", "4", "--arms", "clipdpo,dpo"], monkeypatch)
    with pytest.raises(SystemExit):  # method and arms are the world's switches
        parse(["--method", "both"], monkeypatch)


def test_make_pipeline_run_passes_method_and_arms_on_the_world_only():
    assert make_command("WORLD=2", "METHOD=povid") == ["--run-id", "world2", "--world", "2", "--method", "povid"]
    assert make_command("ARMS=clipdpo,povid,both,control") == ["--run-id", "world0", "--world", "0", "--arms",
                                                              "clipdpo,povid,both,control"]
    assert make_command("DEMO=1", "METHOD=povid") == ["--run-id", "demo"]  # the arms are the world's


def test_train_overrides_reach_every_arm_on_top_of_its_method(tmp_path, monkeypatch):
    """--set train.KEY=VALUE changes the pipeline's train config and, through arm_train_config, the train config
    of every arm trained after it (each built from the world's train config for its method), the override
    winning over the method's own value (#15)."""
    import torch

    from pipelines.run import local_configs, pipeline_arguments, with_overrides
    from pipelines.world_run import arm_train_config

    for name in ("CLIPDPO_WORLD", "CLIPDPO_CONTROL", "CLIPDPO_WORLD_CACHE", "CLIPDPO_METHOD", "CLIPDPO_ARMS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", str(torch.get_num_threads()))
    fake_built_world(tmp_path / "cache", seed=4)
    world = ["--world", "4", "--world-cache", str(tmp_path / "cache"), "--method", "povid",
             "--arms", "clipdpo,povid,both,control"]
    sets = ["train.learning_rate=2e-5", "train.stage1_epochs=2", "filter.pair_min_margin=3"]
    args = parse([*world, *(word for item in sets for word in ("--set", item))], monkeypatch)
    plain, _ = local_configs(args, tmp_path / "state")
    configs = with_overrides(plain, args.overrides)
    assert arm_train_config(configs, "povid") == configs["train"]  # the pipeline's own arm: its very config
    assert configs["train"]["learning_rate"] == 2e-5 and configs["train"]["stage1_epochs"] == 2
    for arm in ("clipdpo", "both", "control"):
        train = arm_train_config(configs, arm)
        assert (train["learning_rate"], train["stage1_epochs"]) == (2e-5, 2), arm
        # the rest is the arm's method's: both keeps POVID's schedule, clipdpo and control the world's
        assert train.get("method", "clipdpo") == ("clipdpo" if arm == "control" else arm)
        assert train["epochs"] == (1 if arm == "both" else 2)
    assert configs["filter"]["pair_min_margin"] == 3  # the control arm filters with the run's filter config
    # without --set each arm keeps its method's values (POVID 1e-5, the world's CLIP-DPO 5e-5)
    assert [arm_train_config(plain, arm)["learning_rate"] for arm in ("povid", "both", "clipdpo", "control")] == [
        1e-5, 1e-5, 5e-5, 5e-5]
    # the kept items are not a pipeline parameter: the same parameters as without --set
    assert set(pipeline_arguments(args, configs, "local")) == set(pipeline_arguments(args, plain, "local"))
    with pytest.raises(SystemExit):  # on the world, --method and --arms say which methods train
        parse([*world, "--set", "train.method=both"], monkeypatch)


def test_povid_text_arm_is_povid_without_the_noisy_image_term():
    """POVID's Table 3 ablation as an arm: POVID's train config with beta_2 = 0 and nothing else changed."""
    from clipdpo.world.stageconfigs import method_train_config
    from pipelines.world_run import ARMS, arm_train_config, arm_root

    world_train = {"model": "/w/lvlm", "learning_rate": 5e-5, "epochs": 2, "beta": 0.1}
    configs = {"world_train": world_train}
    povid, text_only = arm_train_config(configs, "povid"), arm_train_config(configs, "povid_text")
    assert povid == method_train_config(world_train, "povid") and povid["povid_beta_2"] > 0
    assert text_only == {**povid, "povid_beta_2": 0.0}
    assert "povid_text" in ARMS and arm_root("s3://b/runs/r", "povid_text") == "s3://b/runs/r-povid_text"


def test_qa_is_a_world_switch_off_by_default(tmp_path, monkeypatch):
    """--qa (make QA=1, CLIPDPO_WORLD_QA=1) turns generate's QA path on with the world's QA writer; without it QA
    stays off (the README's measured tables are without QA pairs); it needs --world."""
    import torch

    from clipdpo.world import stageconfigs
    from pipelines.run import local_configs

    for name in ("CLIPDPO_WORLD", "CLIPDPO_CONTROL", "CLIPDPO_WORLD_CACHE", "CLIPDPO_WORLD_QA"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", str(torch.get_num_threads()))  # keep this process's threads as they are
    root = fake_built_world(tmp_path / "cache", seed=6)
    argv = ["--world", "6", "--world-cache", str(tmp_path / "cache")]
    configs, _ = local_configs(parse(argv, monkeypatch), tmp_path / "state")
    assert configs["generate"]["qa"] == {"enabled": False}
    asked = []  # the writer's training is the QA writer tests' business: here, which world it is asked for
    on = {"enabled": True, "model": {"name": "world-qa-writer", "path": "/w/qa-writer-x"}}
    monkeypatch.setattr(stageconfigs, "world_qa_config", lambda world_root, say=print: asked.append(world_root) or on)
    args = parse([*argv, "--qa"], monkeypatch)
    configs, _ = local_configs(args, tmp_path / "state")
    assert asked == [str(root.resolve())] and configs["generate"]["qa"]["enabled"]
    monkeypatch.setenv("CLIPDPO_WORLD_QA", "1")
    assert parse(argv, monkeypatch).qa
    with pytest.raises(SystemExit):  # the QA writer is the world's
        parse(["--qa"], monkeypatch)
    assert make_command("QA=1") == ["--run-id", "world0", "--world", "0", "--qa"]
    assert make_command("DEMO=1", "QA=1") == ["--run-id", "demo"]
