"""The pipeline compiled for several rounds (--rounds; clipdpo.rounds): round 1 is the one-round pipeline's stages,
round 2 runs inside a dsl.If on round 1's check and captions with and trains from round 1's model; each path
through the checks ends in the run's evaluation, the gate and the report; round 2's training job is as valid a
cluster object as round 1's. One round compiles to exactly today's pipeline."""

from __future__ import annotations

import json
import re

import k8s_checks
import pytest
from test_pipeline_spec import STAGE_EXECUTORS

ROUND_EXECUTORS = {  # the round components (pipelines/round_components.py) -> image
    "exec-round-start": "filter",
    "exec-round-generate-shard": "generate",
    "exec-round-generate-finalize": "generate",
    "exec-round-score-shard": "score",
    "exec-round-plan-evaluation": "filter",
    "exec-round-evaluate-task": "evaluate",
    "exec-round-evaluate-merge": "evaluate",
    "exec-round-check": "filter",
    "exec-rounds-evaluation": "evaluate",
}


@pytest.fixture(scope="module")
def two_rounds(tmp_path_factory, compile_to):
    return compile_to(str(tmp_path_factory.mktemp("kfp") / "rounds2.yaml"), "--rounds", "2")


def walk(spec: dict, dag: dict | None = None, conditions: tuple = ()):
    """Every task with the dsl.If conditions it runs under: (name, task, conditions), depth first."""
    dag = spec["root"]["dag"] if dag is None else dag
    for name, task in dag["tasks"].items():
        condition = task.get("triggerPolicy", {}).get("condition")
        inner = conditions + ((condition,) if condition else ())
        yield name, task, inner
        component = spec["components"][task["componentRef"]["name"]]
        if "dag" in component:
            yield from walk(spec, component["dag"], inner)


def tasks_of(spec: dict) -> dict[str, tuple[dict, tuple]]:
    found = {name: (task, conditions) for name, task, conditions in walk(spec)}
    assert len(found) == len(list(walk(spec)))  # kfp names every task of a pipeline apart
    return found


def source(task: dict, parameter: str) -> str:
    """Where a task's input comes from: `<producer task>.<output>` (inside a sub-DAG kfp passes another scope's
    output in as pipelinechannel--<task>-<output>), `param:<pipeline parameter>`, or the constant."""
    given = task["inputs"]["parameters"][parameter]
    if "taskOutputParameter" in given:
        return f"{given['taskOutputParameter']['producerTask']}.{given['taskOutputParameter']['outputParameterKey']}"
    if "componentInputParameter" in given:
        channel = given["componentInputParameter"].removeprefix("pipelinechannel--")
        return channel if "-" in channel else f"param:{channel}"
    return given["runtimeValue"]["constant"]


CONTINUE_AFTER_ROUND_1 = "inputs.parameter_values['pipelinechannel--round-check-verdict'] == 'continue'"


def test_one_round_compiles_to_todays_pipeline(compiled, compile_to, tmp_path):
    spec, _, path = compiled
    assert set(spec["deploymentSpec"]["executors"]) == set(STAGE_EXECUTORS)  # no round component in it
    compile_to(str(tmp_path / "one.yaml"), "--rounds", "1")
    assert open(tmp_path / "one.yaml").read() == open(path).read()


def test_round_two_captions_with_and_trains_from_round_ones_model(two_rounds):
    spec, _ = two_rounds
    tasks = tasks_of(spec)
    # round 1: the one-round pipeline's stages, outside any round condition
    for name in ("ingest", "generate-shard", "score-finalize", "filter-pairs", "training-pairs", "train"):
        assert CONTINUE_AFTER_ROUND_1 not in tasks[name][1], name
    start, conditions = tasks["round-start"]
    assert conditions == (CONTINUE_AFTER_ROUND_1,)  # round 2 runs only where round 1's check says so
    assert source(start, "model_uri") == "train-Output" and source(start, "round_index") == 2
    for name in ("round-generate-shard", "round-generate-finalize"):  # the captioner: round 1's model
        task, conditions = tasks[name]
        assert conditions == (CONTINUE_AFTER_ROUND_1,), name
        assert source(task, "model_uri") == "train-Output" and source(task, "round_index") == 2
        assert source(task, "run_root") == "param:run_root"  # the images: the run's (round 1's), under it
        assert source(task, "config_json") == "param:generate_config"
    # round 2's own steps run on its root and train config (round_start's: the model round 1 trained, which is
    # also the DPO reference); train-2 is round 2's training job
    assert source(tasks["score-finalize-2"][0], "candidates_uri") == "round-generate-finalize.Output"
    assert source(tasks["filter-pairs-2"][0], "scores_uri") == "score-finalize-2.Output"
    assert source(tasks["training-pairs-2"][0], "clipdpo_pairs_uri") == "filter-pairs-2.Output"
    train = tasks["train-2"][0]
    assert (
        source(train, "run_root") == "round-start.root" and source(train, "config_json") == "round-start.train_config"
    )
    assert source(train, "pairs_uri") == "training-pairs-2.Output"
    assert source(tasks["round-check-2"][0], "previous_decision") == "round-check-decision"
    assert source(tasks["round-check"][0], "previous_decision") == ""


def test_every_path_through_the_checks_ends_in_the_runs_evaluation_the_gate_and_the_report(two_rounds):
    spec, _ = two_rounds
    tasks = tasks_of(spec)
    stop = f"!({CONTINUE_AFTER_ROUND_1})"
    endings = {name: conditions for name, (_, conditions) in tasks.items() if name.startswith(("gate", "report"))}
    assert endings == {
        "gate": (CONTINUE_AFTER_ROUND_1,),  # after round 2, the last round
        "report": (CONTINUE_AFTER_ROUND_1,),
        "gate-2": (stop,),  # round 1 was worse than the base: no round 2
        "report-2": (stop,),
    }
    for gate, final in (("gate", "rounds-evaluation"), ("gate-2", "rounds-evaluation-2")):
        assert source(tasks[gate][0], "report_uri") == f"{final}.Output"
    assert source(tasks["rounds-evaluation"][0], "decision_uri") == "round-check-2.decision"
    assert source(tasks["rounds-evaluation-2"][0], "decision_uri") == "round-check-decision"
    assert not tasks["gate"][0].get("cachingOptions", {}).get("enableCache")
    cached = [name for name, (task, _) in tasks.items() if not name.startswith(("for-loop", "condition", "exit"))]
    assert all(tasks[n][0]["cachingOptions"]["enableCache"] for n in cached if not n.startswith(("gate", "cleanup")))


def test_the_round_components_run_their_stages_images_and_the_fan_outs_hold_gpus(two_rounds):
    spec, platform = two_rounds
    executors = spec["deploymentSpec"]["executors"]
    # a component used in several rounds (or on both sides of a check) has an executor per use: exec-gate-2, ...
    # (every round's evaluation is a round component's: the one-round evaluation steps are not in it)
    one_round_evaluation = {"exec-plan-evaluation", "exec-evaluate-task", "exec-evaluate-merge"}
    expected = (set(STAGE_EXECUTORS) - one_round_evaluation) | set(ROUND_EXECUTORS)
    assert {re.sub(r"-\d+$", "", name) for name in executors} == expected
    for name, stage in ROUND_EXECUTORS.items():
        assert executors[name]["container"]["image"].startswith(f"ghcr.io/clipdpo/clipdpo-{stage}:"), name
    placed = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for name in ("exec-round-generate-shard", "exec-round-score-shard", "exec-round-evaluate-task"):
        assert executors[name]["container"]["resources"]["accelerator"]["resourceType"] == "nvidia.com/gpu"
        assert placed[name]["tolerations"], name
    for name in ("exec-round-start", "exec-round-check", "exec-rounds-evaluation"):
        assert "accelerator" not in executors[name]["container"].get("resources", {}), name
        assert placed[name]["secretAsEnv"][0]["secretName"] == "clipdpo-s3", name


@pytest.mark.parametrize("launcher", ["trainjob", "pytorchjob"])
def test_round_twos_training_job_is_valid_against_the_crds_and_trains_from_round_ones_model(
    launcher, bucket, monkeypatch
):
    """Round 2's train task is the one-round train step on round_start's root and config: its job validates against
    the CRDs as round 1's does, and reads a config that starts from round 1's model, under round 2's root."""
    from clipdpo import steps
    from clipdpo.cluster import launch as launch_module
    from clipdpo.storage import Storage, join

    launched = []
    monkeypatch.setattr(launch_module, "launch", lambda spec, key, limits, **kw: launched.append((spec, key)))
    monkeypatch.setenv("CLIPDPO_RUN", "clipdpo-run-1")
    run_root, storage = f"{bucket}/runs/r", Storage()
    first = steps.artifact_uri(run_root, "train")
    storage.write_bytes(join(first, "train_summary.json"), json.dumps({"fingerprint": "f1"}).encode())
    job = dict(image="ghcr.io/x/clipdpo-train:0.1.0", nodes=2, gpus_per_node=8, namespace="ml", queue_name="gpus")
    steps.train_step(run_root, '{"beta": 0.2}', launcher=launcher, **job)  # round 1
    root, config = steps.round_start_step(run_root, 2, first + "#f1", '{"beta": 0.2}')
    steps.train_step(root, config, launcher=launcher, pairs_uri=join(root, "pairs#p2"), **job)  # round 2
    (spec_1, key_1), (spec_2, key_2) = launched
    for spec, key in launched:
        k8s_checks.validate_any(launch_module.build_manifest(spec, launcher, key, run="clipdpo-run-1"))
    assert spec_2.name != spec_1.name  # another job, not round 1's re-attached
    args = dict(zip(spec_2.train_args[::2], spec_2.train_args[1::2]))
    assert args["--input"] == join(root, "pairs") and args["--output"] == join(root, "model")
    written = json.loads(storage.read_bytes(args["--config"]))
    assert args["--config"] == join(root, "configs", "train.json")
    assert written["model"] == join(first, "model") and written["beta"] == 0.2


def local_build(rounds: int):
    """The pipeline as a local run builds it (pipelines.run.run_kfp): its spec (as the compiled YAML holds it) and
    each task's round."""
    from google.protobuf import json_format

    from pipelines.clipdpo_pipeline import build_pipeline, task_rounds
    from pipelines.settings import SETTINGS

    pipeline = build_pipeline(SETTINGS.cluster.for_local(), rounds)
    return json_format.MessageToDict(pipeline.pipeline_spec), task_rounds(pipeline)


def cache_identity(spec: dict, task: dict) -> tuple:
    """What kfp's local runner keys a task's cache entry on (kfp.local.cache.LocalCache.compute_key: the component's
    name, its container's image, command, args and env, the task's argument values), the values as the spec wires
    them: a pipeline parameter, a constant or a producer task's output by that task's name. The same identity and
    the same producers' outputs (cached, by induction) give the same key."""
    component = task["componentRef"]["name"]
    container = spec["deploymentSpec"]["executors"][spec["components"][component]["executorLabel"]]["container"]
    wiring = {name: source(task, name) for name in task.get("inputs", {}).get("parameters", {})}
    return component, json.dumps(container, sort_keys=True), wiring, task.get("cachingOptions")


def test_a_rerun_with_one_more_round_finds_the_rounds_before_in_kfps_cache():
    """ROUNDS=4 after ROUNDS=3: rounds 1-3 are, to kfp's local cache, the very tasks the 3-round run ran (same
    names, components, containers, argument wiring), so only round 4 and the steps after the rounds run; and the
    summary (which names tasks by these names) counts them in the same rounds."""
    spec_3, rounds_3 = local_build(3)
    spec_4, rounds_4 = local_build(4)
    assert sorted(set(rounds_3.values())) == [1, 2, 3] and sorted(set(rounds_4.values())) == [1, 2, 3, 4]
    assert {name: index for name, index in rounds_4.items() if index < 4} == rounds_3
    tasks_3, tasks_4 = tasks_of(spec_3), tasks_of(spec_4)
    for name in rounds_3:
        assert cache_identity(spec_4, tasks_4[name][0]) == cache_identity(spec_3, tasks_3[name][0]), name
    fourth = {name for name, index in rounds_4.items() if index == 4}
    assert {"round-start-3", "train-4", "round-check-4"} <= fourth and not fourth & set(tasks_3)
    # the run's evaluation, the gate and the report follow the rounds, in none of them: they judge round 4 too
    assert not {name for name in rounds_4 if name.startswith(("rounds-evaluation", "gate", "report", "cleanup"))}
    assert "ingest" in rounds_4 and rounds_4["ingest"] == 1  # round 1: the one-round pipeline's stages


def test_a_one_round_runs_steps_are_round_ones_in_a_run_of_several():
    """`--rounds 2` after a one-round run: round 1's stages (ingest to train) are the one-round pipeline's tasks to
    kfp's cache; only round 1's evaluation and check are round components of their own."""
    spec_1, rounds_1 = local_build(1)
    spec_2, rounds_2 = local_build(2)
    assert rounds_1 == {}  # one round: the summary has no round column
    tasks_1, tasks_2 = tasks_of(spec_1), tasks_of(spec_2)
    first = {name for name, index in rounds_2.items() if index == 1}
    shared = first & set(tasks_1)
    assert first - shared == {"round-plan-evaluation", "round-evaluate-task", "round-evaluate-merge", "round-check"}
    assert {"ingest", "generate-shard", "score-finalize", "filter-pairs", "training-pairs", "train"} <= shared
    for name in shared:
        assert cache_identity(spec_2, tasks_2[name][0]) == cache_identity(spec_1, tasks_1[name][0]), name
