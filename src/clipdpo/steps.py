"""What a pipeline step does, as plain functions: the kfp components in pipelines/ only call these.

Artifacts of one run live under `run_root` with fixed names (images, candidates, scores, pairs,
model), so a step needs only the run root, its stage config (JSON) and its shard. Each function
returns the URI it produced, which the pipeline passes on to make the order explicit.
"""

from __future__ import annotations

import json
import os
import tempfile

from clipdpo.storage import join

ARTIFACTS = {"ingest": "images", "generate": "candidates", "score": "scores", "filter": "pairs", "train": "model",
             "evaluate": "evaluation"}
INPUTS = {"generate": "ingest", "score": "generate", "filter": "score", "train": "filter"}


def artifact_uri(run_root: str, stage: str) -> str:
    return join(run_root, ARTIFACTS[stage])


def _config_file(config_json: str) -> str:
    try:
        config = json.loads(config_json or "{}")
    except json.JSONDecodeError as err:
        raise ValueError(f"stage config is not valid JSON: {err}") from err
    if not isinstance(config, dict):
        raise ValueError(f"stage config must be a JSON object, got {type(config).__name__}")
    handle, path = tempfile.mkstemp(suffix=".json", prefix="clipdpo-config-")
    with os.fdopen(handle, "w") as out:
        json.dump(config, out)
    return path


def stage_argv(stage: str, run_root: str, config_path: str, *, shard_index: int = 0, shard_count: int = 1,
               finalize: bool = False, source: str = "") -> list[str]:
    argv = ["--output", artifact_uri(run_root, stage), "--config", config_path]
    if stage in INPUTS:
        argv += ["--input", artifact_uri(run_root, INPUTS[stage])]
    if stage == "ingest" and source:
        argv += ["--source", source]
    if finalize:
        argv += ["--finalize", "--shard", f"0/{shard_count}"]
    elif stage not in ("train",):
        argv += ["--shard", f"{shard_index}/{shard_count}"]
    return argv


def run_stage(stage: str, run_root: str, config_json: str = "{}", *, shard_index: int = 0, shard_count: int = 1,
              finalize: bool = False, source: str = "") -> str:
    """Run one stage (or one shard of it, or its finalize) in this process; return its output URI."""
    import importlib

    from clipdpo.stage import setup_logging

    setup_logging()
    config_path = _config_file(config_json)
    try:
        module = importlib.import_module(f"clipdpo.{stage}.__main__")
        module.run(stage_argv(stage, run_root, config_path, shard_index=int(shard_index),
                              shard_count=int(shard_count), finalize=finalize, source=source))
    finally:
        os.unlink(config_path)
    return artifact_uri(run_root, stage)


def train_step(run_root: str, config_json: str, *, launcher: str, image: str = "", nodes: int = 1,
               gpus_per_node: int = 8, namespace: str = "", s3_secret: str = "clipdpo-s3",
               service_account: str = "clipdpo-train", node_selector_json: str = "{}", tolerations_json: str = "[]",
               timeout_hours: float = 72.0, queue_name: str = "", runtime: str = "torch-distributed") -> str:
    """Train on this run's pairs: in this process (`local`), or as a multi-node Kubeflow Trainer v2
    TrainJob (`trainjob`, on ClusterTrainingRuntime `runtime`) or Training Operator v1 PyTorchJob
    (`pytorchjob`); `queue_name`: a Kueue LocalQueue (empty: none)."""
    if launcher == "local":
        return run_stage("train", run_root, config_json)
    from clipdpo.cluster import jobspec
    from clipdpo.cluster.launch import BUILDERS, current_namespace, launch, owner_from_env

    if launcher not in BUILDERS:
        raise ValueError(f"train launcher {launcher!r}: expected 'trainjob', 'pytorchjob' or 'local'")
    output = artifact_uri(run_root, "train")
    config = json.loads(config_json or "{}")
    train_args = ["--input", artifact_uri(run_root, "filter"), "--output", output]
    train_args += [arg for key, value in sorted(config.items()) for arg in ("--set", f"{key}={json.dumps(value)}")]
    launch_key = output + "\n" + json.dumps(config, sort_keys=True)  # same output + config = same job
    namespace = namespace or current_namespace()
    spec = jobspec.TrainJobSpec(
        name=jobspec.job_name(launch_key), namespace=namespace, image=image,
        train_args=train_args, nodes=int(nodes), gpus_per_node=int(gpus_per_node), s3_secret=s3_secret,
        service_account=service_account, node_selector=json.loads(node_selector_json),
        tolerations=json.loads(tolerations_json), active_deadline_seconds=int(timeout_hours * 3600),
        queue_name=queue_name, runtime=runtime, owner=owner_from_env() if namespace == current_namespace() else None)
    # the follower's backstop lies past the job's own deadline, so the operator's reason is what we see
    launch(spec, launch_key, launcher=launcher, timeout_seconds=timeout_hours * 3600 + 600,
           schedule_timeout_seconds=3600)  # pods not all placed within an hour: fail naming why
    return output


def evaluation_models(model_uri: str, train_config_json: str, engine: str) -> list[dict]:
    """The base model the run trained from, then the trained one (LoRA: its merged copy)."""
    from clipdpo.storage import Storage
    from clipdpo.train.config import TrainConfig

    base = json.loads(train_config_json or "{}").get("model") or TrainConfig().model
    trained = join(model_uri, "model")
    if Storage().exists(join(trained, "merged", "config.json")):
        trained = join(trained, "merged")
    return [{"name": "base", "path": base, "engine": engine}, {"name": "clip-dpo", "path": trained, "engine": engine}]


def evaluate_step(run_root: str, model_uri: str, train_config_json: str, config_json: str) -> str:
    """Evaluate the base and the trained model; an empty config means no evaluation was asked for.

    Without `models` in the config, the pair compared is the run's base model and its trained model,
    on `engine` (a config key of this step only; default vllm)."""
    import logging

    from clipdpo.stage import setup_logging

    setup_logging()
    config = json.loads(config_json or "{}")
    if not config:
        logging.getLogger("clipdpo.evaluate").warning("evaluate: no benchmarks configured (evaluate_config is {}); "
                                                      "skipped")
        return ""
    engine = config.pop("engine", "vllm")
    config.setdefault("models", evaluation_models(model_uri, train_config_json, engine))
    config_path = _config_file(json.dumps(config))
    try:
        from clipdpo.evaluate.__main__ import run

        run(["--output", artifact_uri(run_root, "evaluate"), "--config", config_path])
    finally:
        os.unlink(config_path)
    return artifact_uri(run_root, "evaluate")


def shard_indices(shard_count: int) -> list[int]:
    count = int(shard_count)
    if count < 1:
        raise ValueError(f"shard_count must be >= 1, got {shard_count}")
    return list(range(count))
