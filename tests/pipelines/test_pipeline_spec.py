"""The compiled kfp pipeline spec: stages, images, GPUs, S3 secret, caching, shard fan-out, the exit task."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from clipdpo.stages import NAMES

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STAGE_EXECUTORS = {  # executor -> image of its stage
    "exec-ingest": "filter",
    "exec-generate-shard": "generate",
    "exec-generate-finalize": "generate",
    "exec-score-shard": "score",
    "exec-score-finalize": "score",
    "exec-filter-pairs": "filter",
    "exec-plan-shards": "filter",
    "exec-train": "train",
    "exec-plan-evaluation": "filter",
    "exec-evaluate-task": "evaluate",
    "exec-evaluate-merge": "evaluate",
    "exec-gate": "filter",
    "exec-report": "evaluate",
    "exec-povid-pairs": "generate",
    "exec-training-pairs": "filter",
    "exec-povid-placement": "filter",
    "exec-povid-pairs-cpu": "filter",
    "exec-train-method": "filter",
    "exec-cleanup-train-jobs": "filter",
}


def all_tasks(spec: dict):
    yield from spec["root"]["dag"]["tasks"].items()
    for component in spec["components"].values():
        yield from component.get("dag", {}).get("tasks", {}).items()


def stage_tasks(spec: dict) -> dict:
    """The pipeline's stages: the tasks of the DAG its exit handler wraps (the root holds it and the exit task)."""
    (handler,) = [task for name, task in spec["root"]["dag"]["tasks"].items() if name.startswith("exit-handler")]
    return spec["components"][handler["componentRef"]["name"]]["dag"]["tasks"]


def test_every_stage_runs_its_own_pinned_image(compiled):
    spec, _, _ = compiled
    executors = spec["deploymentSpec"]["executors"]
    assert set(executors) == set(STAGE_EXECUTORS)
    images = {}
    for name, stage in STAGE_EXECUTORS.items():
        image = executors[name]["container"]["image"]
        assert image.startswith(f"ghcr.io/clipdpo/clipdpo-{stage}:"), (name, image)
        tag = image.rsplit(":", 1)[1]
        assert tag and tag != "latest"
        images[stage] = image
    assert len(set(images.values())) == 5  # generate, score, filter, train, evaluate: five images
    # components call the stage code through clipdpo.steps; nothing installs packages at run time
    for name in STAGE_EXECUTORS:
        command = " ".join(executors[name]["container"]["command"])
        assert "pip install" not in command
    assert "generate_step(run_root" in " ".join(executors["exec-generate-shard"]["container"]["command"])


def test_gpu_stages_request_gpus_and_tolerate_gpu_taints(compiled):
    spec, platform, _ = compiled
    executors = spec["deploymentSpec"]["executors"]
    for name in ("exec-generate-shard", "exec-score-shard", "exec-evaluate-task", "exec-povid-pairs"):
        accelerator = executors[name]["container"]["resources"]["accelerator"]
        assert accelerator["resourceType"] == "nvidia.com/gpu" and int(accelerator["resourceCount"]) == 1
        tolerations = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"][name]["tolerations"]
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in tolerations
    for name in (
        "exec-filter-pairs",
        "exec-train",
        "exec-ingest",
        "exec-training-pairs",
        "exec-povid-placement",
        "exec-povid-pairs-cpu",
    ):
        assert "accelerator" not in executors[name]["container"].get("resources", {})


def test_s3_secret_is_wired_into_every_step_that_touches_s3(compiled):
    _, platform, _ = compiled
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    # these read no S3
    no_s3 = {"exec-plan-shards", "exec-povid-placement", "exec-train-method", "exec-cleanup-train-jobs"}
    for name in set(STAGE_EXECUTORS) - no_s3:
        secrets = executors[name]["secretAsEnv"]
        required = [s for s in secrets if not s["optional"]]
        assert required and required[0]["secretName"] == "clipdpo-s3"
        env = {pair["envVar"] for s in secrets for pair in s["keyToEnv"]}
        assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"} <= env


def test_caching_is_on_for_every_task(compiled):
    spec, _, _ = compiled
    tasks = dict(all_tasks(spec))
    leaf_tasks = {
        name: task for name, task in tasks.items() if not name.startswith(("for-loop", "condition-", "exit-handler"))
    }
    assert len(leaf_tasks) == 19
    # the gate reads the promoted pointer, which other runs move: it must run every time; so must the exit task,
    # which looks for this run's jobs
    assert not leaf_tasks.pop("gate").get("cachingOptions", {}).get("enableCache")
    assert not leaf_tasks.pop("cleanup-train-jobs").get("cachingOptions", {}).get("enableCache")
    assert all(task["cachingOptions"]["enableCache"] for task in leaf_tasks.values())


def test_generate_and_score_fan_out_over_shards(compiled):
    spec, _, _ = compiled
    loops = {name: task for name, task in stage_tasks(spec).items() if "parameterIterator" in task}
    assert len(loops) == 3
    inner = {}
    for task in (t for t in loops.values() if "plan-shards" in str(t["parameterIterator"])):
        iterator = task["parameterIterator"]["items"]["inputParameter"]
        assert "plan-shards" in iterator
        component = spec["components"][task["componentRef"]["name"]]
        inner.update(component["dag"]["tasks"])
    assert set(inner) == {"generate-shard", "score-shard"}
    # finalize steps collect every shard's output before writing the manifest
    finalize = stage_tasks(spec)["generate-finalize"]
    assert "for-loop" in str(finalize["inputs"]["parameters"]["shard_outputs"])
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["shard_count"]["parameterType"] == "NUMBER_INTEGER"
    for stage in NAMES:
        assert f"{stage}_config" in params


@pytest.mark.slow  # three more compiles, each a process of its own
def test_compile_is_deterministic_and_images_follow_settings(compiled, compile_to, tmp_path):
    _, _, path = compiled
    again = str(tmp_path / "again.yaml")
    compile_to(again)
    assert open(path).read() == open(again).read()
    spec, _ = compile_to(
        str(tmp_path / "custom.yaml"), CLIPDPO_REGISTRY="registry.example.com/ml", CLIPDPO_IMAGE_TAG="2.0.1"
    )
    assert (
        spec["deploymentSpec"]["executors"]["exec-train"]["container"]["image"]
        == "registry.example.com/ml/clipdpo-train:2.0.1"
    )
    failed = subprocess.run(
        [sys.executable, "-m", "pipelines.compile", str(tmp_path / "x.yaml")],
        cwd=ROOT,
        env={**os.environ, "CLIPDPO_IMAGE_TAG": "latest"},
        capture_output=True,
        text=True,
    )
    assert failed.returncode != 0 and "latest" in failed.stderr


def test_evaluate_fans_out_per_model_and_task_then_merges_and_gates(compiled):
    spec, _, _ = compiled
    root = stage_tasks(spec)
    loop = next(task for task in root.values() if "plan-evaluation" in str(task.get("parameterIterator", "")))
    assert set(spec["components"][loop["componentRef"]["name"]]["dag"]["tasks"]) == {"evaluate-task"}
    assert "for-loop" in str(root["evaluate-merge"]["inputs"]["parameters"]["task_records"])  # every record
    assert root["gate"]["inputs"]["parameters"]["report_uri"]["taskOutputParameter"]["producerTask"] == "evaluate-merge"
    assert "gate_config" in spec["root"]["inputDefinitions"]["parameters"]


def test_method_chooses_the_pairs_train_consumes(compiled):
    """povid pairs come from the ingested images; train reads what training-pairs picks from the filter's
    CLIP-DPO pairs and POVID's, by the train config's method."""
    spec, _, _ = compiled
    root = stage_tasks(spec)
    tasks = dict(all_tasks(spec))

    def producer(task: str, parameter: str) -> str:
        return root[task]["inputs"]["parameters"][parameter]["taskOutputParameter"]["producerTask"]

    assert producer("training-pairs", "clipdpo_pairs_uri") == "filter-pairs"
    assert producer("train", "pairs_uri") == "training-pairs"
    for task in ("povid-pairs", "povid-pairs-cpu"):  # either branch: the ingested images, POVID's config
        inputs = tasks[task]["inputs"]["parameters"]
        assert inputs["images_uri"]["componentInputParameter"] == "pipelinechannel--ingest-Output"
        assert inputs["config_json"]["componentInputParameter"] == "pipelinechannel--povid_config"
        assert inputs["method"]["componentInputParameter"] == "pipelinechannel--train-method-Output"
    for task in ("povid-placement", "training-pairs"):  # both take the method the train-method step read
        assert producer(task, "method") == "train-method"
    assert root["train-method"]["inputs"]["parameters"]["train_config_json"]["componentInputParameter"] == (
        "pipelinechannel--train_config"
    )
    assert root["povid-placement"]["inputs"]["parameters"]["config_json"]["componentInputParameter"] == (
        "pipelinechannel--povid_config"
    )
    executors = spec["deploymentSpec"]["executors"]
    assert "pairs_uri=pairs_uri" in " ".join(executors["exec-train"]["container"]["command"])


def test_povid_pairs_hold_a_gpu_only_for_an_llm_rewrite(compiled):
    """The povid pairs step runs in one of two branches on the placement step's answer (clipdpo.steps.
    povid_placement): "gpu" (an LLM through vLLM) -> the generate image with a GPU and its tolerations; anything
    else (method clipdpo: nothing to make; the world's rewriter; an injector on the CPU) -> the filter image with
    CPU and memory requests only. training-pairs takes whichever ran (dsl.OneOf)."""
    spec, platform, _ = compiled
    components, executors = spec["components"], spec["deploymentSpec"]["executors"]
    placed = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    stages = stage_tasks(spec)
    (branches_name,) = [name for name in stages if name.startswith("condition-branches")]
    branches = components[stages[branches_name]["componentRef"]["name"]]["dag"]
    conditions = {}
    for branch in branches["tasks"].values():
        (task,) = components[branch["componentRef"]["name"]]["dag"]["tasks"].values()
        conditions[task["componentRef"]["name"]] = branch["triggerPolicy"]["condition"]
    gpu_when = "inputs.parameter_values['pipelinechannel--povid-placement-Output'] == 'gpu'"
    assert conditions == {"comp-povid-pairs": gpu_when, "comp-povid-pairs-cpu": f"!({gpu_when})"}

    gpu = executors["exec-povid-pairs"]["container"]
    assert gpu["image"].startswith("ghcr.io/clipdpo/clipdpo-generate:")
    assert gpu["resources"]["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert placed["exec-povid-pairs"]["tolerations"]
    for name in ("exec-povid-pairs-cpu", "exec-povid-placement"):
        container = executors[name]["container"]
        assert container["image"].startswith("ghcr.io/clipdpo/clipdpo-filter:"), name
        assert "accelerator" not in container["resources"] and container["resources"]["resourceCpuRequest"], name
        assert "tolerations" not in placed.get(name, {}) and "nodeSelector" not in placed.get(name, {}), name

    selectors = branches["outputs"]["parameters"]
    (oneof,) = selectors.values()
    assert [s["producerSubtask"] for s in oneof["valueFromOneof"]["parameterSelectors"]] == list(branches["tasks"])
    povid_input = stages["training-pairs"]["inputs"]["parameters"]["povid_pairs_uri"]
    assert povid_input["taskOutputParameter"] == {
        "producerTask": branches_name,
        "outputParameterKey": next(iter(selectors)),
    }


@pytest.mark.parametrize(
    "method, povid, where",
    [
        ("clipdpo", "{}", "cpu"),  # nothing to make: POVID's config is not even read
        ("povid", '{"source": "plugin", "rewriter": "m:f", "ground_truth": "/w/images"}', "cpu"),
        ("both", '{"source": "llm", "ground_truth": "s3://b/llava.json"}', "gpu"),  # the default injector: vLLM
        (
            "povid",
            '{"ground_truth": "gt.json", "injector": {"name": "m", "path": "p", "engine": "hf", "device": "cpu"}}',
            "cpu",
        ),
        ("povid", '{"ground_truth": "gt.json", "injector": {"name": "m", "path": "p", "engine": "hf"}}', "gpu"),
    ],
)
def test_povid_placement_by_method_and_rewriter(method, povid, where):
    from clipdpo.steps import povid_placement

    assert povid_placement(povid, method) == where


def test_povid_placement_refuses_a_bad_povid_config_before_any_pod_starts():
    from clipdpo.config import ConfigError
    from clipdpo.steps import povid_placement

    with pytest.raises(ConfigError, match="povid_config"):
        povid_placement('{"source": "llm"}', "povid")


def test_the_train_step_retries_and_reattaches_to_its_job(compiled):
    """The launcher pod may be lost (drain, preemption): the step retries and finds its job by the run (the Argo
    workflow label every pod of the run carries), asks autoscalers not to evict it, and owns nothing (no pod uid
    passed: the job must not be garbage-collected with the pod)."""
    spec, platform, _ = compiled
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    train_env = {e["name"]: e["fieldPath"] for e in executors["exec-train"]["fieldPathAsEnv"]}
    assert train_env == {
        "CLIPDPO_RUN": "metadata.labels['workflows.argoproj.io/workflow']",
        "CLIPDPO_POD_NAME": "metadata.name",
    }
    assert executors["exec-train"]["podMetadata"]["annotations"] == {
        "cluster-autoscaler.kubernetes.io/safe-to-evict": "false",
        "karpenter.sh/do-not-disrupt": "true",
    }
    assert stage_tasks(spec)["train"]["retryPolicy"]["maxRetryCount"] >= 2
    parameters = spec["root"]["inputDefinitions"]["parameters"]
    assert parameters["train_admission_timeout_minutes"]["defaultValue"] == 0.0  # a queue is waiting, not stuck
    assert parameters["train_startup_timeout_minutes"]["defaultValue"] == 30.0
    assert parameters["train_schedule_timeout_minutes"]["defaultValue"] == 60.0


def test_the_povid_steps_take_the_method_not_the_train_config(compiled):
    """Only the train-method step reads the whole train config on POVID's side: another beta or learning rate
    leaves POVID's placement and pairs cached (their inputs are the method and POVID's own config)."""
    spec, _, _ = compiled
    root = stage_tasks(spec)
    for name, task in all_tasks(spec):
        if name in ("povid-placement", "training-pairs", "povid-pairs", "povid-pairs-cpu"):
            assert set(task["inputs"]["parameters"]) >= {"method"} and "train_config_json" not in set(
                task["inputs"]["parameters"]
            ), name
    assert set(root["train-method"]["inputs"]["parameters"]) == {"train_config_json"}
