"""What a pipeline step does, as plain functions: the kfp components in pipelines/ only call these.

Artifacts of one run live under `run_root` with fixed names (clipdpo.stages), so a step needs only
the run root, its stage config (the pipeline parameter, a JSON object) and its shard. Each step
builds the stage's typed config from that parameter and calls the stage's `run` in this process;
the training job is the one process boundary, and it gets the config as a file on S3. Each
function returns the URI it produced, versioned by what it wrote (`<uri>#<version>`, clipdpo.outputref):
the pipeline passes it on, which makes the order explicit and puts the version into kfp's cache key of
every later step, so a step that reran with another config reruns the steps after it.

A step owns its artifact under the run root: when kfp runs it (its inputs or config changed), it replaces
an artifact made from other inputs or config (`overwrite`: the old one stays readable until the new one is
complete); with the same inputs and config the stage's own checks find it complete and do nothing.
"""

from __future__ import annotations

import json
from typing import Any, Callable, TypeVar

from clipdpo import config as config_lib
from clipdpo import outputref, rounds
from clipdpo.stage import ShardSpec, setup_logging
from clipdpo.stages import stage
from clipdpo.storage import Storage, is_remote, join, split_s3

T = TypeVar("T")


def artifact_uri(run_root: str, name: str) -> str:
    """Where stage `name` writes under `run_root`."""
    return join(run_root, stage(name).artifact)


def input_uri(run_root: str, name: str) -> str:
    """The artifact stage `name` reads: its input stage's output."""
    source = stage(name).input
    if source is None:
        raise ValueError(f"stage {name!r} reads no other stage's artifact")
    return artifact_uri(run_root, source)


def bucket_of(run_root: str) -> str:
    """s3://<bucket> of an s3:// run root: where run-spanning objects (eval cache, promoted pointer) live."""
    return "s3://" + split_s3(run_root)[0]


def config_object(config_json: str, where: str) -> dict[str, Any]:
    """The JSON object in a config parameter ("" means {}), or an error naming the parameter."""
    try:
        config = json.loads(config_json or "{}")
    except json.JSONDecodeError as err:
        raise config_lib.ConfigError(f"{where}: not valid JSON ({err})") from err
    if not isinstance(config, dict):
        raise config_lib.ConfigError(f"{where}: must be a JSON object, got {type(config).__name__}")
    return config


# The config class each pipeline config parameter (`<name>_config`) is parsed into by its step.
def typed_config(cls: type[T], config_json: str, where: str) -> T:
    """The stage's config dataclass from its pipeline parameter (unknown keys and bad types are errors)."""
    return config_lib.from_dict(cls, config_object(config_json, where), where)


def run_sharded(
    name: str, run: Callable[..., Any], cfg: Any, run_root: str, shard: ShardSpec, finalize: bool, input_ref: str = ""
) -> str:
    """Stage `name` on its input (`input_ref`: the step's input as the pipeline passed it; "" for this run's
    own), writing under `run_root`; its output, versioned."""
    setup_logging()
    output = artifact_uri(run_root, name)
    source = outputref.plain(input_ref) if input_ref else input_uri(run_root, name)
    run(cfg, source, output, shard=shard, finalize=finalize, overwrite=True)
    if shard.count > 1 and not finalize:  # one shard of a fan-out: no manifest yet
        return outputref.shard_ref(Storage(), output, source, config_lib.to_dict(cfg))
    return outputref.ref(Storage(), output)


def ingest_step(run_root: str, source: str, config_json: str) -> str:
    """Pack the images at `source` (empty: the config's source) into this run's images artifact."""
    from clipdpo import ingest

    setup_logging()
    output = artifact_uri(run_root, "ingest")
    ingest.run(typed_config(ingest.IngestConfig, config_json, "ingest_config"), source or None, output, overwrite=True)
    return outputref.ref(Storage(), output)


def generate_step(
    run_root: str,
    config_json: str,
    shard_index: int = 0,
    shard_count: int = 1,
    finalize: bool = False,
    images_uri: str = "",
) -> str:
    """One shard of the generate fan-out (`finalize`: the manifest once every shard is done)."""
    from clipdpo import generate

    cfg = typed_config(generate.GenerateConfig, config_json, "generate_config")
    return run_sharded(
        "generate", generate.run, cfg, run_root, ShardSpec(int(shard_index), int(shard_count)), finalize, images_uri
    )


def score_step(
    run_root: str,
    config_json: str,
    shard_index: int = 0,
    shard_count: int = 1,
    finalize: bool = False,
    candidates_uri: str = "",
) -> str:
    """One shard of the score fan-out (`finalize`: the manifest once every shard is done)."""
    from clipdpo import score
    from clipdpo.score.scorer import ScorerConfig

    cfg = typed_config(ScorerConfig, config_json, "score_config")
    return run_sharded(
        "score", score.run, cfg, run_root, ShardSpec(int(shard_index), int(shard_count)), finalize, candidates_uri
    )


def filter_step(run_root: str, config_json: str, scores_uri: str = "") -> str:
    from clipdpo import filter as filter_stage

    cfg = typed_config(filter_stage.FilterConfig, config_json, "filter_config")
    return run_sharded("filter", filter_stage.run, cfg, run_root, ShardSpec(), False, scores_uri)


# Under a run root, beside the stages' artifacts: POVID's pairs (its source step) and, for method `both`,
# their union with the filter's CLIP-DPO pairs.
POVID_PAIRS = "povid-pairs"
BOTH_PAIRS = "both-pairs"


def train_method(train_config_json: str) -> str:
    """The train config's `method` (clipdpo | povid | both): what the training consumes."""
    from clipdpo.train.config import TrainConfig

    return typed_config(TrainConfig, train_config_json, "train_config").method


METHODS = ("clipdpo", "povid", "both")


def _checked_method(method: str) -> str:
    if method not in METHODS:
        raise ValueError(f"train method {method!r}: expected one of {list(METHODS)}")
    return method


def povid_placement(config_json: str, method: str) -> str:
    """Where the povid pairs step runs: "gpu" when an LLM rewrites the answers (`source: llm`, through the
    generate stage's engines: vLLM), else "cpu": nothing to make (method clipdpo: the POVID config is not read),
    a plugin rewriter (rule-based), or an injector the config puts on the CPU (`engine: hf`, `device: cpu`).
    `method`: the train config's (train_method), so the rest of the train config does not reach these steps."""
    if _checked_method(method) == "clipdpo":
        return "cpu"
    from clipdpo.generate import povid_source

    cfg = typed_config(povid_source.PovidSourceConfig, config_json, "povid_config")  # a bad config fails here
    on_cpu = cfg.injector.engine == "hf" and cfg.injector.device == "cpu"
    return "gpu" if cfg.source == "llm" and not on_cpu else "cpu"


def povid_step(run_root: str, config_json: str, method: str, images_uri: str = "") -> str:
    """POVID's pairs from the run's images (or `images_uri`) into `<run_root>/povid-pairs` when the train
    method is povid or both, returned versioned; "" (nothing made) for clipdpo."""
    if _checked_method(method) == "clipdpo":
        return ""
    from clipdpo.generate import povid_source

    setup_logging()
    cfg = typed_config(povid_source.PovidSourceConfig, config_json, "povid_config")
    output = join(run_root, POVID_PAIRS)
    images = outputref.plain(images_uri) if images_uri else artifact_uri(run_root, "ingest")
    povid_source.run(cfg, images, output, overwrite=True)
    return outputref.ref(Storage(), output)


def training_pairs_step(run_root: str, method: str, clipdpo_pairs: str = "", povid_pairs: str = "") -> str:
    """The pairs artifact the train step reads (versioned), by the train method: the filter's
    CLIP-DPO pairs, POVID's pairs, or (both) their union under `<run_root>/both-pairs`. Defaults: this run's
    artifacts."""
    clipdpo_pairs = outputref.plain(clipdpo_pairs) if clipdpo_pairs else artifact_uri(run_root, "filter")
    povid_pairs = outputref.plain(povid_pairs) if povid_pairs else join(run_root, POVID_PAIRS)
    match _checked_method(method):
        case "clipdpo":
            chosen = clipdpo_pairs
        case "povid":
            chosen = povid_pairs
        case "both":
            from clipdpo.filter.combine import combine_pairs

            setup_logging()
            chosen = combine_pairs(
                {"clipdpo": clipdpo_pairs, "povid": povid_pairs}, join(run_root, BOTH_PAIRS), overwrite=True
            )
    return outputref.ref(Storage(), chosen)


def write_train_config(run_root: str, config: Any) -> str:
    """The train config as the job reads it: `<run_root>/configs/train.json`; returns its URI."""
    uri = join(run_root, "configs", "train.json")
    Storage().write_bytes(uri, json.dumps(config_lib.to_dict(config), indent=2, sort_keys=True).encode())
    return uri


def train_step(run_root: str, config_json: str, *, launcher: str, pairs_uri: str = "", **job: Any) -> str:
    """Train on this run's pairs (`pairs_uri`: another pairs artifact, e.g. training_pairs_step's): in this
    process (`local`), or as a multi-node Kubeflow Trainer v2 TrainJob (`trainjob`) or Training Operator v1
    PyTorchJob (`pytorchjob`).

    `job`: the cluster job's settings (image, nodes, gpus_per_node, timeout_hours, and optionally
    s3_secret, service_account, namespace, node_selector_json, tolerations_json, queue_name: a Kueue
    LocalQueue, runtime: the TrainJob's runtime, jobspec.runtime_ref)."""
    from clipdpo.train.config import TrainConfig

    setup_logging()
    cfg = typed_config(TrainConfig, config_json, "train_config")  # a bad key fails here, not in the job
    output = artifact_uri(run_root, "train")
    pairs_uri = outputref.plain(pairs_uri) if pairs_uri else input_uri(run_root, "train")
    if launcher == "local":
        from clipdpo import train

        train.run(cfg, pairs_uri, output, overwrite=True)
        return outputref.ref(Storage(), output)
    if launcher not in ("trainjob", "pytorchjob"):
        raise ValueError(f"train launcher {launcher!r}: expected 'trainjob', 'pytorchjob' or 'local'")
    train_args = [
        "--input",
        pairs_uri,
        "--output",
        output,
        "--config",
        write_train_config(run_root, cfg),
        "--overwrite",
    ]
    launch_key = output + "\n" + json.dumps(config_object(config_json, "train_config"), sort_keys=True)
    launch_train_job(train_args, launch_key, launcher, job)  # same output + config = same job
    return outputref.ref(Storage(), output)


def launch_train_job(train_args: list[str], launch_key: str, launcher: str, job: dict[str, Any]) -> None:
    """Run `python -m clipdpo.train <train_args>` as a cluster job and follow it to the end.

    `job`: image, nodes, gpus_per_node, timeout_hours, s3_secret, service_account, namespace,
    node_selector_json, tolerations_json, queue_name, runtime (all but image have defaults), and the
    follower's limits, each counted from admission (0: none): schedule_timeout_minutes (default 60: every
    pod placed), startup_timeout_minutes (default 30 after placement: every container started),
    admission_timeout_minutes (default 0: time in a Kueue queue is waiting, not stuck; when set, the
    step fails but the job keeps its place in the queue)."""
    from clipdpo.cluster import jobspec
    from clipdpo.cluster.follow import JobLimits
    from clipdpo.cluster.launch import current_namespace, launch, run_from_env, run_launch_key
    from clipdpo.tracking import job_env

    namespace = job.get("namespace") or current_namespace()
    timeout_hours = float(job.get("timeout_hours", 72.0))
    run = run_from_env()  # retries of this step re-attach to the job; another run starts its own
    launch_key = run_launch_key(launch_key, run)
    spec = jobspec.TrainJobSpec(
        name=jobspec.job_name(launch_key),
        namespace=namespace,
        image=job["image"],
        train_args=train_args,
        nodes=int(job.get("nodes", 1)),
        gpus_per_node=int(job.get("gpus_per_node", 8)),
        s3_secret=job.get("s3_secret", "clipdpo-s3"),
        service_account=job.get("service_account", "clipdpo-train"),
        node_selector=json.loads(job.get("node_selector_json", "{}")),
        tolerations=json.loads(job.get("tolerations_json", "[]")),
        active_deadline_seconds=int(timeout_hours * 3600),
        queue_name=job.get("queue_name", ""),
        runtime=job.get("runtime", jobspec.DEFAULT_RUNTIME),
        env=job_env(),
    )  # MLflow/TensorBoard settings (clipdpo.tracking), when the step has them
    # the follower's backstop lies past the job's own deadline, so the operator's reason is what we see
    limits = JobLimits(
        timeout_seconds=timeout_hours * 3600 + 600,
        schedule_timeout_seconds=float(job.get("schedule_timeout_minutes", 60.0)) * 60,
        startup_timeout_seconds=float(job.get("startup_timeout_minutes", 30.0)) * 60,
        admission_timeout_seconds=float(job.get("admission_timeout_minutes", 0.0)) * 60,
    )
    launch(spec, launch_key, limits, launcher=launcher, run=run)


def cleanup_train_jobs_step(launcher: str, namespace: str = "") -> list[str]:
    """For the run's exit task: delete this run's training jobs that have not finished (a cancelled run, or a
    launcher lost with no retry left); failed jobs stay for inspection. Nothing to do for `local`."""
    if launcher == "local":
        return []
    from clipdpo.cluster.launch import current_namespace, delete_run_jobs, run_from_env

    setup_logging()
    return delete_run_jobs(namespace or current_namespace(), run_from_env())


def trained_model_path(model_uri: str) -> str:
    """The model a train artifact holds in Hugging Face format: its `model/` folder, or (LoRA) the merged full
    model in it (save_merged), which is what is evaluated and what a next round loads."""
    trained = join(model_uri, "model")
    if Storage().exists(join(trained, "merged", "config.json")):
        trained = join(trained, "merged")
    return trained


def evaluation_models(model_uri: str, train_config_json: str, engine: str) -> list[dict]:
    """The base model the run trained from, then the trained one (LoRA: its merged copy)."""
    from clipdpo.train.config import TrainConfig

    base = typed_config(TrainConfig, train_config_json, "train_config").model
    trained = trained_model_path(model_uri)
    return [{"name": "base", "path": base, "engine": engine}, {"name": "clip-dpo", "path": trained, "engine": engine}]


def evaluate_settings(run_root: str, model_uri: str, train_config_json: str, config_json: str) -> dict | None:
    """The evaluate config as a dict (None: no evaluation asked for, i.e. an empty config).

    Without `models`, the pair compared is the run's base model and its trained model on `engine` (default
    vllm); `result_cache` defaults to s3://<run bucket>/eval-cache."""
    config = config_object(config_json, "evaluate_config")
    if not config:
        return None
    model_uri = outputref.plain(model_uri)  # the train step's versioned reference
    config.setdefault("models", evaluation_models(model_uri, train_config_json, config.get("engine", "vllm")))
    if is_remote(run_root):
        config.setdefault("result_cache", join(bucket_of(run_root), "eval-cache"))
    return config


def evaluate_step(run_root: str, model_uri: str, train_config_json: str, config_json: str) -> str:
    """Evaluate the base and the trained model in one process (the fan-out's sequential twin)."""
    import logging

    from clipdpo import evaluate
    from clipdpo.evaluate.config import EvaluateConfig

    setup_logging()
    config = evaluate_settings(run_root, model_uri, train_config_json, config_json)
    if config is None:
        logging.getLogger("clipdpo.evaluate").warning(
            "evaluate: no benchmarks configured (evaluate_config is {}); skipped"
        )
        return ""
    output = artifact_uri(run_root, "evaluate")
    metrics = evaluate.run(config_lib.from_dict(EvaluateConfig, config, "evaluate_config"), output)
    from clipdpo.tracking import log_evaluation

    # MLflow (when configured): the figures join the training's run
    log_evaluation(output, model_uri, metrics.get("results", {}), Storage())
    return output


def evaluation_plan(run_root: str, model_uri: str, train_config_json: str, config_json: str) -> list[str]:
    """The fan-out's items, each "<model>|<task>|<trained model's version>" ([] when no evaluation is configured):
    kfp caches an evaluate task by its item (the loop binds no other step's output), so a retrained model
    changes every item and its tasks rerun."""
    config = evaluate_settings(run_root, model_uri, train_config_json, config_json)
    return planned_items(config, model_uri)


def planned_items(config: dict | None, model_uri: str) -> list[str]:
    """The fan-out's items for the evaluate config `config` (None: no evaluation, no items), each versioned by the
    trained model's reference `model_uri`."""
    from clipdpo.evaluate.config import EvaluateConfig
    from clipdpo.evaluate.fanout import plan

    if config is None:
        return []
    trained = outputref.split(model_uri)[1]
    return [
        f"{item['model']}|{item['task']}|{trained}"
        for item in plan(config_lib.from_dict(EvaluateConfig, config, "evaluate_config"))
    ]


def evaluate_task_step(run_root: str, train_config_json: str, config_json: str, item: str) -> str:
    """One (model, task) of the evaluation fan-out (the trained model: this run's train artifact); its record's URI."""
    config = evaluate_settings(run_root, artifact_uri(run_root, "train"), train_config_json, config_json) or {}
    return evaluate_item(config, artifact_uri(run_root, "evaluate"), item)


def evaluate_item(config: dict, output: str, item: str) -> str:
    """The (model, task) of fan-out item `item` with the evaluate config `config`, into `output`; its record."""
    from clipdpo import evaluate
    from clipdpo.evaluate.config import EvaluateConfig
    from clipdpo.evaluate.fanout import task_record_uri

    setup_logging()
    model, task = item.split("|")[:2]
    evaluate.run(config_lib.from_dict(EvaluateConfig, config, "evaluate_config"), output, task=(model, task))
    return outputref.ref(Storage(), task_record_uri(output, model, task))


def evaluate_merge_step(run_root: str, model_uri: str, train_config_json: str, config_json: str) -> str:
    """The report (metrics.json, report.md, report.html) from the fan-out's records; "" when none was asked for."""
    config = evaluate_settings(run_root, model_uri, train_config_json, config_json)
    return merge_evaluation(config, artifact_uri(run_root, "evaluate"), model_uri)


def merge_evaluation(config: dict | None, output: str, model_uri: str) -> str:
    """metrics.json and the reports in `output` from the fan-out's records there (None: no evaluation, ""),
    logged to the training's MLflow run (`model_uri`: its artifact); the output, versioned."""
    from clipdpo import evaluate
    from clipdpo.evaluate.config import EvaluateConfig

    setup_logging()
    if config is None:
        return ""
    metrics = evaluate.run(config_lib.from_dict(EvaluateConfig, config, "evaluate_config"), output, merge=True)
    from clipdpo.tracking import log_evaluation

    # MLflow (when configured): the figures join the training's run
    log_evaluation(output, outputref.plain(model_uri), metrics.get("results", {}), Storage())
    return outputref.ref(Storage(), output)


def gate_step(run_root: str, report_uri: str, config_json: str) -> str:
    """Judge the run's trained model against the promoted one; move the pointer on pass. Returns the record URI."""
    from clipdpo import gate

    setup_logging()
    cfg = typed_config(gate.GateConfig, config_json, "gate_config")
    if not (cfg.pointer or is_remote(run_root)):
        raise config_lib.ConfigError(f"gate_config.pointer: needed when the run root {run_root!r} is not on S3")
    pointer = cfg.pointer or join(bucket_of(run_root), "promoted")
    record = gate.run(cfg, outputref.plain(report_uri), pointer, run_root, Storage())
    uri = join(run_root, "gate", "decision.json")
    Storage().write_bytes(uri, json.dumps(record, indent=2, sort_keys=True).encode())
    print(
        json.dumps(
            {"stage": "gate", "passed": record["passed"], "promoted": record["pointer"]["moved"], "decision": uri}
        ),
        flush=True,
    )
    return uri


def shard_indices(shard_count: int) -> list[int]:
    count = int(shard_count)
    if count < 1:
        raise ValueError(f"shard_count must be >= 1, got {shard_count}")
    return list(range(count))


# -- iterative rounds (clipdpo.rounds) --------------------------------------------------------------------------------
# A round step gets the run root and its round's index (a constant of the compiled pipeline) and finds round k-1's
# model where round k-1 wrote it: inside a kfp ParallelFor the local runner binds another task's output to the loop
# item, so the fan-out steps read nothing but the pipeline's parameters, their index and their item (the versioned
# references they are also given order them and key kfp's cache on a cluster). Round 1's stages are the steps
# above; from round 2 on `round_start_step` names the round's root and train config, and the score-finalize,
# filter, training-pairs and train steps above run on them.


def previous_model(run_root: str, index: int) -> str:
    """Round k-1's train artifact (round k >= 2 starts from it)."""
    if rounds.check_round(index) < 2:
        raise ValueError("round 1 starts from the configured model, not from a round before it")
    return artifact_uri(rounds.round_root(run_root, index - 1), "train")


def round_start_step(run_root: str, index: int, model_uri: str, train_config_json: str) -> tuple[str, str]:
    """Round k >= 2: its root and its train config (from round k-1's model, `model_uri` its versioned train
    output), recorded in `<root>/round.json`, which versions the root for kfp's local cache check."""
    previous = outputref.plain(model_uri) or previous_model(run_root, index)
    config = rounds.round_train_config(
        config_object(train_config_json, "train_config"), trained_model_path(previous), index
    )
    root = rounds.round_root(run_root, index)
    record = {"round": index, "starts_from": outputref.ref(Storage(), previous), "train_config": config}
    Storage().write_bytes(join(root, outputref.ROUND_RECORD), json.dumps(record, indent=2, sort_keys=True).encode())
    return root, json.dumps(config, sort_keys=True)


def round_generate_step(
    run_root: str,
    index: int,
    config_json: str,
    train_config_json: str,
    shard_index: int = 0,
    shard_count: int = 1,
    finalize: bool = False,
) -> str:
    """One shard of round k's generate fan-out (`finalize`: its manifest): the run's images captioned by round
    k-1's model alone, into the round's candidates. The model's version is part of the artifact's fingerprint,
    so a retrained round k-1 makes round k caption again."""
    import functools
    from dataclasses import replace

    from clipdpo import generate
    from clipdpo.train.config import TrainConfig

    cfg = typed_config(generate.GenerateConfig, config_json, "generate_config")
    previous = previous_model(run_root, index)
    version = outputref.version(Storage(), previous)
    if not version:
        raise FileNotFoundError(f"round {index}: round {index - 1}'s model {previous} is not complete")
    base = typed_config(TrainConfig, train_config_json, "train_config").model
    path, name = trained_model_path(previous), rounds.round_name(index - 1)
    cfg = replace(cfg, captioners=[rounds.round_captioner(cfg.captioners, base, path, name)])
    run = functools.partial(generate.run, input_fingerprints=[version])
    shard = ShardSpec(int(shard_index), int(shard_count))
    return run_sharded(
        "generate", run, cfg, rounds.round_root(run_root, index), shard, finalize, artifact_uri(run_root, "ingest")
    )


def round_score_step(run_root: str, index: int, config_json: str, shard_index: int = 0, shard_count: int = 1) -> str:
    """One shard of round k's score fan-out, on the round's candidates."""
    return score_step(rounds.round_root(run_root, index), config_json, shard_index, shard_count)


def round_evaluation_uri(run_root: str, index: int) -> str:
    """Round k's evaluation (the base and round k's model): under its round folder, round 1's too, as
    `<run_root>/evaluation` is the run's once the rounds end."""
    return join(rounds.round_folder(run_root, index), "evaluation")


def round_evaluate_settings(run_root: str, index: int, train_config_json: str, config_json: str) -> dict | None:
    """The evaluate config of round k (None: no evaluation): the baseline (the first model) and the trained model
    (the last: its engine settings) pointed at round k's model and named round<k>."""
    model = artifact_uri(rounds.round_root(run_root, index), "train")
    config = evaluate_settings(run_root, model, train_config_json, config_json)
    if config is None:
        return None
    trained = {**config["models"][-1], "name": rounds.round_name(index), "path": trained_model_path(model)}
    config["models"] = [config["models"][0], trained]
    return config


def round_evaluation_plan(
    run_root: str, index: int, model_uri: str, train_config_json: str, config_json: str
) -> list[str]:
    """Round k's evaluation fan-out items (as evaluation_plan's, for the round's models)."""
    return planned_items(round_evaluate_settings(run_root, index, train_config_json, config_json), model_uri)


def round_evaluate_task_step(run_root: str, index: int, train_config_json: str, config_json: str, item: str) -> str:
    config = round_evaluate_settings(run_root, index, train_config_json, config_json) or {}
    return evaluate_item(config, round_evaluation_uri(run_root, index), item)


def round_evaluate_merge_step(
    run_root: str, index: int, model_uri: str, train_config_json: str, config_json: str
) -> str:
    config = round_evaluate_settings(run_root, index, train_config_json, config_json)
    return merge_evaluation(config, round_evaluation_uri(run_root, index), model_uri)


def _json_at(storage: Storage, uri: str) -> dict | None:
    """The JSON object at `uri` (a reference or a URI; for an evaluation folder its metrics.json); None for ""."""
    if not uri:
        return None
    uri = outputref.plain(uri)
    return json.loads(storage.read_bytes(uri if uri.endswith(".json") else join(uri, "metrics.json")))


def round_check_step(
    run_root: str, index: int, evaluation_uri: str, previous_decision: str, gate_config_json: str
) -> tuple[str, str]:
    """Judge round k against round k-1 (round 1: the base) with the gate's rules; write its decision (every round's
    so far, the model kept) to `<run_root>/round-<k>/decision.json`. (rounds.CONTINUE or rounds.STOP, the decision
    versioned)."""
    from clipdpo.gate import GateConfig

    storage = Storage()
    rules = typed_config(GateConfig, gate_config_json, "gate_config").rules
    before = _json_at(storage, previous_decision)
    if index > 1 and before is None:
        raise ValueError(f"round {index}: the decision of round {index - 1} is needed, none was given")
    previous_metrics = _json_at(storage, before["evaluation"]) if before else None
    verdict = rounds.judge(index, rules, _json_at(storage, evaluation_uri), previous_metrics)
    path = trained_model_path(artifact_uri(rounds.round_root(run_root, index), "train"))
    record = rounds.decision_record(index, verdict, path, outputref.plain(evaluation_uri), before)
    uri = join(rounds.round_folder(run_root, index), rounds.DECISION)
    storage.write_bytes(uri, json.dumps(record, indent=2, sort_keys=True).encode())
    print(json.dumps({"stage": "round-check", "round": index, "summary": rounds.summary_line(record)}), flush=True)
    return rounds.CONTINUE if verdict["continue"] else rounds.STOP, outputref.ref(storage, uri)


def rounds_evaluation_step(run_root: str, decision_uri: str, train_config_json: str, config_json: str) -> str:
    """The run's evaluation once the rounds end, from the rounds' records (nothing is answered again): the base,
    each round's model (round1, round2, ...), then the model kept under the trained model's name, the gate's
    candidate and the report's as in a one-round run. Writes `<run_root>/rounds.json` (the last decision: every
    round's verdict, the model kept); returns `<run_root>/evaluation` versioned ("" with no evaluation)."""
    from clipdpo.evaluate.config import EvaluateConfig
    from clipdpo.evaluate.fanout import task_names

    setup_logging()
    storage = Storage()
    record = _json_at(storage, decision_uri)
    if record is None:
        raise ValueError("the rounds' evaluation needs the last round's decision, none was given")
    storage.write_bytes(join(run_root, rounds.ROUNDS_RECORD), json.dumps(record, indent=2, sort_keys=True).encode())
    kept = record["kept"]
    model = artifact_uri(rounds.round_root(run_root, kept["round"]), "train")
    config = evaluate_settings(run_root, model, train_config_json, config_json)
    if config is None:
        return ""
    config["models"] = rounds.final_models(config["models"], record)
    tasks = task_names(config_lib.from_dict(EvaluateConfig, config, "evaluate_config"))
    output, base, trained = artifact_uri(run_root, "evaluate"), config["models"][0], config["models"][-1]
    rounds.copy_records(storage, kept["evaluation"], base["name"], output, base["name"], tasks)
    for each in record["rounds"]:
        rounds.copy_records(storage, each["evaluation"], each["name"], output, each["name"], tasks)
    rounds.copy_records(storage, kept["evaluation"], kept["name"], output, trained["name"], tasks)
    return merge_evaluation(config, output, model)
