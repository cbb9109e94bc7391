"""The compiled pipeline's cluster values (pipelines/cluster_values.py) and its exit task: each value lands on the
steps that need it in the IR YAML, values a user sets reach it (in-process and through CLIPDPO_CLUSTER_VALUES), a
bad value fails when it loads, and the exit task wraps every stage and calls the training-job cleanup."""

# No `from __future__ import annotations`: kfp reads the test component's real types.
import dataclasses
import json

import pytest
import yaml

from clipdpo.config import ConfigError
from pipelines.cluster_values import (
    FAN_OUTS,
    GPU_STEPS,
    ClusterValues,
    StepValues,
    cpu_cores,
    load_values,
    memory_bytes,
)

RUN_FIELD = "metadata.labels['workflows.argoproj.io/workflow']"
# the steps only a pipeline of several rounds has (pipelines/round_components.py)
ROUND_STEPS = (
    "round-start",
    "round-generate-shard",
    "round-generate-finalize",
    "round-score-shard",
    "round-plan-evaluation",
    "round-evaluate-task",
    "round-evaluate-merge",
    "round-check",
    "rounds-evaluation",
)
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"


def leaf_tasks(spec: dict) -> dict[str, dict]:
    """Every task that runs a container, by name (loops, branches and the exit handler are DAGs)."""
    dags = [spec["root"]["dag"], *(c["dag"] for c in spec["components"].values() if "dag" in c)]
    tasks = {name: task for dag in dags for name, task in dag["tasks"].items()}
    return {name: task for name, task in tasks.items() if "dag" not in spec["components"][task["componentRef"]["name"]]}


def loops(spec: dict) -> dict[str, dict]:
    """The ParallelFor tasks by the name their group was given (their taskInfo name)."""
    dags = [spec["root"]["dag"], *(c["dag"] for c in spec["components"].values() if "dag" in c)]
    return {t["taskInfo"]["name"]: t for dag in dags for t in dag["tasks"].values() if "parameterIterator" in t}


def kubernetes_executors(platform: dict) -> dict[str, dict]:
    return platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


@pytest.fixture(scope="module")
def compile_values(tmp_path_factory):
    """Compile in this process with the given ClusterValues: (spec, platform)."""
    from pipelines.compile import compile_pipeline

    def compile_with(values: ClusterValues, rounds: int = 1) -> tuple[dict, dict]:
        path = str(tmp_path_factory.mktemp("values") / "clipdpo.yaml")
        compile_pipeline(path, values, rounds)
        documents = list(yaml.safe_load_all(open(path)))
        return documents[0], documents[1] if len(documents) > 1 else {}

    return compile_with


def test_every_step_gets_requests_limits_retries_and_timeout_from_the_values(compiled):
    """The default values: every container (the light plan steps and the exit task too) requests and limits CPU and
    memory as its row says, retries and times out as it says; train has no timeout (its job's deadline governs)."""
    spec, platform, _ = compiled
    values = ClusterValues()
    executors, placed = spec["deploymentSpec"]["executors"], kubernetes_executors(platform)
    tasks = leaf_tasks(spec)
    # a value set for every step, and a step for every value set but the rounds' (test_the_rounds_steps_...)
    assert set(tasks) == set(values.steps) - set(ROUND_STEPS)
    for name, task in tasks.items():
        pod = values.step(name)
        resources = executors[f"exec-{name}"]["container"]["resources"]
        assert (resources["resourceCpuRequest"], resources["resourceMemoryRequest"]) == (
            pod.cpu_request,
            pod.memory_request,
        ), name
        assert (resources["resourceCpuLimit"], resources["resourceMemoryLimit"]) == (pod.cpu_limit, pod.memory_limit)
        assert task.get("retryPolicy", {}).get("maxRetryCount", 0) == pod.retries, name
        deadline = placed.get(f"exec-{name}", {}).get("activeDeadlineSeconds")
        assert int(deadline or 0) == pod.timeout_minutes * 60, name
    assert "activeDeadlineSeconds" not in placed["exec-train"] and tasks["train"]["retryPolicy"] == {
        "backoffDuration": "60s",
        "backoffFactor": 2.0,
        "backoffMaxDuration": "3600s",
        "maxRetryCount": 3,
    }
    assert "retryPolicy" not in tasks["gate"]  # a second judgement after a moved pointer would judge itself
    assert executors["exec-plan-shards"]["container"]["resources"]["resourceCpuRequest"] == "500m"
    # off by default: no Kueue label, no pull secrets, no fan-out limit, no run TTL (see ClusterValues)
    assert not any(QUEUE_LABEL in str(e.get("podMetadata", "")) or "imagePullSecret" in e for e in placed.values())
    assert not any("parallelismLimit" in str(loop.get("iteratorPolicy", "")) for loop in loops(spec).values())
    assert "pipelineConfig" not in platform["platforms"]["kubernetes"]


def test_values_a_user_sets_land_on_the_steps_that_need_them(compile_values):
    steps = ClusterValues().steps
    values = ClusterValues(
        steps={
            **steps,
            "plan-shards": StepValues("250m", "256Mi", "500m", "300Mi", retries=4, timeout_minutes=5),
            "train": StepValues("3", "6G", "3", "6G", retries=7, timeout_minutes=0),
        },
        retry_backoff_seconds=30,
        retry_backoff_factor=3.0,
        retry_backoff_max_seconds=900,
        parallelism={"generate-shards": 2, "score-shards": 0, "evaluate-tasks": 5},
        gpu_queue_name="team-gpus",
        image_pull_secrets=["regcred", "mirror-cred"],
        ttl_seconds_after_success=86400,
        ttl_seconds_after_failure=604800,
    )
    spec, platform = compile_values(values)
    executors, placed, tasks = spec["deploymentSpec"]["executors"], kubernetes_executors(platform), leaf_tasks(spec)
    plan = executors["exec-plan-shards"]["container"]["resources"]
    assert (plan["resourceCpuRequest"], plan["resourceMemoryRequest"]) == ("250m", "256Mi")
    assert (plan["resourceCpuLimit"], plan["resourceMemoryLimit"]) == ("500m", "300Mi")
    assert placed["exec-plan-shards"]["activeDeadlineSeconds"] == "300"
    assert tasks["plan-shards"]["retryPolicy"] == {
        "backoffDuration": "30s",
        "backoffFactor": 3.0,
        "backoffMaxDuration": "900s",
        "maxRetryCount": 4,
    }
    assert tasks["train"]["retryPolicy"]["maxRetryCount"] == 7
    assert executors["exec-train"]["container"]["resources"]["resourceMemoryRequest"] == "6G"
    # the fan-outs: each loop its own limit; 0 writes none
    limits = {name: loop.get("iteratorPolicy", {}).get("parallelismLimit") for name, loop in loops(spec).items()}
    assert limits == {"generate-shards": 2, "score-shards": None, "evaluate-tasks": 5}
    # the Kueue queue on the GPU steps' pods, and only there
    labelled = {n for n, e in placed.items() if e.get("podMetadata", {}).get("labels", {}).get(QUEUE_LABEL)}
    assert labelled == {f"exec-{step}" for step in GPU_STEPS if step not in ROUND_STEPS}
    assert all(placed[name]["podMetadata"]["labels"][QUEUE_LABEL] == "team-gpus" for name in labelled)
    # pull secrets on every step, the exit task included
    assert set(placed) == set(executors)
    for name, executor in placed.items():
        assert [s["secretName"] for s in executor["imagePullSecret"]] == ["regcred", "mirror-cred"], name
    assert platform["platforms"]["kubernetes"]["pipelineConfig"] == {
        "resourceTtlOnSuccess": 86400,
        "resourceTtlOnFailure": 604800,
    }


def test_the_rounds_steps_get_their_values_and_the_gpu_ones_the_queue(compile_values):
    """A pipeline of several rounds: every step (a round step's tasks named <step>-2, ... where it runs in several
    rounds or on both sides of a round's check) has a value set, each round step is shaped by its own, and the
    round fan-outs' pods hold a GPU in the GPU queue."""
    import re

    steps = ClusterValues().steps
    values = ClusterValues(
        steps={**steps, "round-check": StepValues("3", "3G", retries=2, timeout_minutes=9)}, gpu_queue_name="gpus"
    )
    spec, platform = compile_values(values, rounds=3)
    tasks = leaf_tasks(spec)
    assert {re.sub(r"-\d+$", "", name) for name in tasks} == set(steps) - {
        "plan-evaluation",  # every round's evaluation is a round step's
        "evaluate-task",
        "evaluate-merge",
    }
    checks = [name for name in tasks if re.fullmatch(r"round-check(-\d+)?", name)]
    assert len(checks) == 3 and all(tasks[name]["retryPolicy"]["maxRetryCount"] == 2 for name in checks)
    executors, placed = spec["deploymentSpec"]["executors"], kubernetes_executors(platform)
    check = executors[tasks["round-check"]["componentRef"]["name"].replace("comp-", "exec-", 1)]
    assert check["container"]["resources"]["resourceCpuRequest"] == "3"
    labelled = {n for n, e in placed.items() if e.get("podMetadata", {}).get("labels", {}).get(QUEUE_LABEL)}
    gpu_steps = {f"exec-{step}" for step in GPU_STEPS if step != "evaluate-task"}  # round-evaluate-task instead
    assert {re.sub(r"-\d+$", "", name) for name in labelled} == gpu_steps


def test_a_values_file_in_the_environment_reaches_the_compiled_yaml(compile_to, tmp_path):
    """`make compile` with CLIPDPO_CLUSTER_VALUES naming a YAML file that changes part of one step: that part
    changes, the step's other values and every other step keep their defaults."""
    values_file = tmp_path / "values.yaml"
    values_file.write_text("steps:\n  score-shard:\n    retries: 5\n    memory_request: 48G\n    memory_limit: 48G\n")
    spec, _ = compile_to(str(tmp_path / "clipdpo.yaml"), CLIPDPO_CLUSTER_VALUES=str(values_file))
    tasks = leaf_tasks(spec)
    resources = spec["deploymentSpec"]["executors"]["exec-score-shard"]["container"]["resources"]
    assert tasks["score-shard"]["retryPolicy"]["maxRetryCount"] == 5
    assert (resources["resourceMemoryRequest"], resources["resourceMemoryLimit"]) == ("48G", "48G")
    assert resources["resourceCpuRequest"] == ClusterValues().step("score-shard").cpu_request
    assert tasks["generate-shard"]["retryPolicy"]["maxRetryCount"] == ClusterValues().step("generate-shard").retries


def test_partial_values_keep_the_defaults_they_do_not_name():
    inline = load_values('{"steps": {"train": {"retries": 5}}, "parallelism": {"evaluate-tasks": 4}}')
    defaults = ClusterValues()
    assert inline.step("train") == dataclasses.replace(defaults.step("train"), retries=5)
    assert inline.parallelism == {**defaults.parallelism, "evaluate-tasks": 4}
    assert {k: v for k, v in inline.steps.items() if k != "train"} == {
        k: v for k, v in defaults.steps.items() if k != "train"
    }
    assert load_values("") == defaults == load_values("{}")


@pytest.mark.parametrize(
    "text, named",
    [
        ('{"steps": {"generate_shard": {"retries": 1}}}', "generate_shard"),  # a step name with a typo
        ('{"steps": {"train": {"memory_limit": "1G"}}}', "memory_limit"),  # below the request (2G)
        ('{"steps": {"ingest": {"cpu_request": "two"}}}', "steps.ingest"),  # not a CPU quantity
        ('{"steps": {"ingest": {"cpu_request": 2}}}', "steps.ingest.cpu_request"),  # a quantity is a string
        ('{"steps": {"ingest": {"retries": -1}}}', "retries"),
        ('{"parallelism": {"evaluate": 2}}', "evaluate"),
        ('{"parallelism": {"evaluate-tasks": -1}}', "parallelism"),
        ('{"gpu_queue": "x"}', "gpu_queue"),
        ('{"retry_backoff_factor": 0.5}', "retry_backoff_factor"),
        ('{"steps": ["train"]}', "steps: expected an object"),
    ],
)
def test_a_bad_value_fails_when_the_values_load_naming_it(text, named, tmp_path):
    with pytest.raises(ConfigError, match=named):
        load_values(text)
    path = tmp_path / "values.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=str(path)):  # from a file: the file is named
        load_values(str(path))


def test_a_values_file_that_cannot_be_read_or_holds_no_object_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="CLIPDPO_CLUSTER_VALUES=.*cannot be read"):
        load_values(str(tmp_path / "missing.yaml"))
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="list.yaml: expected an object of cluster values, got list"):
        load_values(str(tmp_path / "list.yaml"))
    (tmp_path / "broken.yaml").write_text("steps: {train: [\n")
    with pytest.raises(ConfigError, match="broken.yaml: not valid YAML or JSON"):
        load_values(str(tmp_path / "broken.yaml"))


def test_quantities_are_read_as_kubernetes_reads_them():
    assert cpu_cores("500m") == 0.5 and cpu_cores("2") == 2.0 and cpu_cores("1.5") == 1.5
    assert memory_bytes("512M") == 512e6 and memory_bytes("1Gi") == 2**30 and memory_bytes("64G") == 64e9
    assert memory_bytes("1Gi") > memory_bytes("1G")
    for bad in ("1.5x", "", "-1", "1 G"):
        with pytest.raises(ValueError):
            memory_bytes(bad)


def test_a_local_run_gets_the_same_values_without_retries(compile_values):
    """kfp's local runner honours retries: a local failure (a bug, not a lost pod) would wait and run again."""
    values = load_values('{"steps": {"filter-pairs": {"retries": 3, "cpu_request": "3", "cpu_limit": "6"}}}')
    local = values.for_local()
    assert all(step.retries == 0 for step in local.steps.values())
    assert local.step("filter-pairs").cpu_request == "3" and local.parallelism == values.parallelism
    spec, _ = compile_values(local)
    assert not [name for name, task in leaf_tasks(spec).items() if "retryPolicy" in task]


def test_the_exit_task_wraps_every_stage_and_cleans_up_this_runs_jobs(compiled):
    """The root holds two tasks: the exit handler's DAG (every stage inside it) and the exit task, which runs when
    that DAG ends however it ended, takes the run's launcher, is never cached, finds the run's jobs by the same
    CLIPDPO_RUN the train step labels them with, and calls clipdpo.steps.cleanup_train_jobs_step."""
    spec, platform, _ = compiled
    root = spec["root"]["dag"]["tasks"]
    (handler,) = [name for name in root if name.startswith("exit-handler")]
    assert set(root) == {handler, "cleanup-train-jobs"}
    cleanup = root["cleanup-train-jobs"]
    assert cleanup["triggerPolicy"] == {"strategy": "ALL_UPSTREAM_TASKS_COMPLETED"}
    assert cleanup["dependentTasks"] == [handler]
    assert cleanup["inputs"]["parameters"]["status"] == {"taskFinalStatus": {"producerTask": handler}}
    assert cleanup["inputs"]["parameters"]["launcher"] == {"componentInputParameter": "train_launcher"}
    assert not cleanup.get("cachingOptions", {}).get("enableCache")
    inside = spec["components"][root[handler]["componentRef"]["name"]]["dag"]["tasks"]
    assert {"ingest", "train", "gate", "report"} <= set(inside)
    assert set(leaf_tasks(spec)) - {"cleanup-train-jobs"} <= {
        name for name, _ in _tasks_below(spec, root[handler]["componentRef"]["name"])
    }
    placed = kubernetes_executors(platform)
    run_env = {e["name"]: e["fieldPath"] for e in placed["exec-cleanup-train-jobs"]["fieldPathAsEnv"]}
    train_env = {e["name"]: e["fieldPath"] for e in placed["exec-train"]["fieldPathAsEnv"]}
    assert run_env == {"CLIPDPO_RUN": RUN_FIELD} and train_env["CLIPDPO_RUN"] == RUN_FIELD
    command = " ".join(spec["deploymentSpec"]["executors"]["exec-cleanup-train-jobs"]["container"]["command"])
    assert "cleanup_train_jobs_step(launcher)" in command
    assert spec["deploymentSpec"]["executors"]["exec-cleanup-train-jobs"]["container"]["image"].startswith(
        "ghcr.io/clipdpo/clipdpo-filter:"
    )


def _tasks_below(spec: dict, component: str):
    """(name, task) of every task in `component`'s DAG and the DAGs below it."""
    for name, task in spec["components"][component]["dag"]["tasks"].items():
        yield name, task
        child = task["componentRef"]["name"]
        if "dag" in spec["components"][child]:
            yield from _tasks_below(spec, child)


def test_the_exit_task_passes_its_launcher_to_the_cleanup_and_logs_what_it_deleted(monkeypatch, tmp_path):
    """The component's own code: the launcher goes to cleanup_train_jobs_step; the deleted jobs are its output and
    its metric."""
    from clipdpo import steps
    from pipelines.clipdpo_pipeline import cleanup_train_jobs

    calls = []
    monkeypatch.setattr(steps, "cleanup_train_jobs_step", lambda launcher: calls.append(launcher) or ["j1", "j2"])

    class Metrics:
        path = str(tmp_path / "metrics.json")

        def log_metric(self, key, value):
            pass

    status = type("Status", (), {"state": "FAILED"})()
    assert cleanup_train_jobs.python_func(launcher="trainjob", status=status, metrics=Metrics()) == "j1,j2"
    assert calls == ["trainjob"] and json.loads(open(Metrics.path).read()) == {"deleted_jobs": 2.0}


@pytest.mark.slow(seconds=20)  # two kfp local tasks, each a process importing kfp
def test_kfp_local_runs_the_exit_task_after_a_failed_stage(tmp_path, monkeypatch):
    """kfp's local runner (as pipelines.run starts it) runs the pipeline's exit task when a stage inside the exit
    handler fails: the same structure the local demo runs, with launcher local (nothing to delete)."""
    from kfp import dsl, local

    from pipelines.clipdpo_pipeline import cleanup_train_jobs

    @dsl.component(base_image="python:3.11", install_kfp_package=False)
    def failing_stage():
        raise SystemExit("error: a stage failed")

    @dsl.pipeline(name="exit-check")
    def exit_check(launcher: str = "local"):
        with dsl.ExitHandler(cleanup_train_jobs(launcher=launcher).set_caching_options(False)):
            failing_stage()

    monkeypatch.delenv("CLIPDPO_RUN", raising=False)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path), enable_caching=False)
    with pytest.raises(RuntimeError, match="failing-stage"):
        exit_check()
    (output,) = list(tmp_path.glob("exit-check-*/cleanup-train-jobs/executor_output.json"))
    written = json.loads(output.read_text())
    assert written["parameterValues"]["Output"] == ""  # ran, and deleted nothing (launcher local)


def test_every_value_is_documented():
    """docs/cluster.md names every key of ClusterValues and StepValues, every step and every fan-out."""
    import os

    doc = open(os.path.join(os.path.dirname(__file__), "..", "..", "docs", "cluster.md")).read()
    names = [f.name for cls in (ClusterValues, StepValues) for f in dataclasses.fields(cls)]
    missing = [n for n in [*names, *ClusterValues().steps, *FAN_OUTS] if f"`{n}`" not in doc]
    assert not missing, missing


def test_the_documented_step_table_is_the_defaults():
    """docs/cluster.md's table of steps shows each step's default requests, limits, retries and timeout."""
    import os
    import re

    doc = open(os.path.join(os.path.dirname(__file__), "..", "..", "docs", "cluster.md")).read()
    rows = re.findall(
        r"^\| `([a-z-]+)`(?: \(GPU\))? \| (\S+) \((?:limit )?(\S+)\) \| (\S+) \| (\d+) \| (\d+|none) \|$", doc, re.M
    )
    documented = {
        name: (cpu, memory, cpu_limit, memory, int(r), int(t) if t != "none" else 0)
        for name, cpu, cpu_limit, memory, r, t in rows
    }
    defaults = {
        name: (s.cpu_request, s.memory_request, s.cpu_limit, s.memory_limit, s.retries, s.timeout_minutes)
        for name, s in ClusterValues().steps.items()
    }
    assert documented == defaults
    gpu_rows = set(re.findall(r"^\| `([a-z-]+)` \(GPU\)", doc, re.M))
    assert gpu_rows == set(GPU_STEPS)
