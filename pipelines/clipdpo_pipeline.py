"""The clipdpo pipeline: ingest -> generate (fan-out) -> score (fan-out) -> filter -> train -> evaluate
(fan-out over (model, task), merged into one report) -> gate (promote the trained model or refuse it).

Every component runs its stage's own image and calls `clipdpo.steps`; no stage logic lives
here. Artifacts pass through S3 under `run_root` (a pipeline parameter); components read and
write S3 themselves with credentials from the S3 Secret. kfp caching is on for every step, so a
rerun with unchanged inputs and configs reuses finished steps (and the stages themselves skip
complete artifacts). Each stage config travels as a JSON-object parameter; the step turns it into
the stage's typed config and calls the stage's `run` (train on a cluster: a PyTorchJob reading the
config from `<run_root>/configs/train.json`). The stages run inside a dsl.ExitHandler whose exit task deletes the
training jobs the run left unfinished, however it ended.

`build_pipeline(values, rounds)` with rounds > 1 repeats generate -> score -> filter -> train, each round from
the model the round before trained, each round's evaluation and check after it, the next round in a dsl.If on
that check (clipdpo.rounds; the round components in pipelines/round_components.py). `task_rounds(pipeline)`
names each task's round, for the local run's summary.

Every pod's requests, limits, retries and timeout, the fan-outs' parallelism, the GPU steps' Kueue queue, image
pull secrets and the run's TTL come from one typed value set, pipelines.cluster_values.ClusterValues
(`build_pipeline(values)`); images, the S3 Secret and GPU placement from pipelines.settings.
"""

# No `from __future__ import annotations`: kfp reads the component signatures' real types.
from types import SimpleNamespace
from typing import List

from kfp import dsl, kubernetes
from kfp.dsl import HTML, Markdown, Metrics, Output, PipelineTaskFinalStatus, pipeline_context

from clipdpo.cluster.jobspec import DEFAULT_RUNTIME
from clipdpo.rounds import CONTINUE, check_round
from pipelines.cluster_values import GPU_STEPS, ClusterValues
from pipelines.round_components import (
    round_check,
    round_evaluate_merge,
    round_evaluate_task,
    round_generate_finalize,
    round_generate_shard,
    round_plan_evaluation,
    round_score_shard,
    round_start,
    rounds_evaluation,
)
from pipelines.settings import S3_OPTIONAL_KEYS, S3_SECRET_KEYS, SETTINGS, TRACKING_CONFIG_MAP, TRACKING_KEYS


@dsl.component(base_image=SETTINGS.image("filter"), install_kfp_package=False)
def plan_shards(shard_count: int, metrics: Output[Metrics]) -> List[int]:
    from clipdpo.report.step_metrics import log_to
    from clipdpo.steps import shard_indices

    log_to(metrics, {"shards": float(shard_count)})
    return shard_indices(shard_count)


# CPU work: the light filter image, so the vLLM generate image is not rebuilt for an ingest change
@dsl.component(base_image=SETTINGS.image("filter"), install_kfp_package=False)
def ingest(run_root: str, source: str, config_json: str, metrics: Output[Metrics]) -> str:
    from clipdpo.report.step_metrics import logged
    from clipdpo.steps import ingest_step

    with logged(metrics, "ingest", run_root):
        return ingest_step(run_root, source, config_json)


@dsl.component(base_image=SETTINGS.image("generate"), install_kfp_package=False)
def generate_shard(
    run_root: str, images_uri: str, config_json: str, shard_index: int, shard_count: int, metrics: Output[Metrics]
) -> str:
    from clipdpo.report.step_metrics import logged
    from clipdpo.steps import generate_step

    with logged(metrics, "generate", run_root, shard=(shard_index, shard_count)):
        # Inside a ParallelFor kfp's local runner binds another task's output to the loop item, so a shard reads
        # its input where the run keeps it (under run_root); `images_uri` orders the step after ingest.
        return generate_step(run_root, config_json, shard_index, shard_count)


@dsl.component(base_image=SETTINGS.image("generate"), install_kfp_package=False)
def generate_finalize(
    run_root: str,
    images_uri: str,
    shard_outputs: List[str],
    config_json: str,
    shard_count: int,
    metrics: Output[Metrics],
) -> str:
    from clipdpo.report.step_metrics import logged
    from clipdpo.steps import generate_step

    with logged(metrics, "generate", run_root):
        return generate_step(run_root, config_json, shard_count=shard_count, finalize=True, images_uri=images_uri)


@dsl.component(base_image=SETTINGS.image("score"), install_kfp_package=False)
def score_shard(
    run_root: str, candidates_uri: str, config_json: str, shard_index: int, shard_count: int, metrics: Output[Metrics]
) -> str:
    from clipdpo.report.step_metrics import logged
    from clipdpo.steps import score_step

    with logged(metrics, "score", run_root, shard=(shard_index, shard_count)):
        # as generate_shard: in a ParallelFor the input comes from under run_root; `candidates_uri` orders it
        return score_step(run_root, config_json, shard_index, shard_count)


@dsl.component(base_image=SETTINGS.image("score"), install_kfp_package=False)
def score_finalize(
    run_root: str,
    candidates_uri: str,
    shard_outputs: List[str],
    config_json: str,
    shard_count: int,
    metrics: Output[Metrics],
) -> str:
    from clipdpo.report.step_metrics import logged
    from clipdpo.steps import score_step

    with logged(metrics, "score", run_root):
        return score_step(run_root, config_json, shard_count=shard_count, finalize=True, candidates_uri=candidates_uri)


@dsl.component(base_image=SETTINGS.image("filter"), install_kfp_package=False)
def filter_pairs(run_root: str, scores_uri: str, config_json: str, metrics: Output[Metrics]) -> str:
    from clipdpo.report.step_metrics import logged
    from clipdpo.steps import filter_step

    with logged(metrics, "filter", run_root):
        return filter_step(run_root, config_json, scores_uri=scores_uri)


@dsl.component(base_image=SETTINGS.image("filter"), install_kfp_package=False)
def train_method(train_config_json: str, metrics: Output[Metrics]) -> str:
    """The train config's method (clipdpo | povid | both): the POVID steps take it alone, so a change to any other
    train setting (beta, the learning rate) leaves their cached results in place."""
    from clipdpo.report.step_metrics import log_to
    from clipdpo.steps import train_method as method_of

    method = method_of(train_config_json)
    log_to(metrics, {"povid": float(method != "clipdpo")})
    return method


@dsl.component(base_image=SETTINGS.image("filter"), install_kfp_package=False)
def povid_placement(config_json: str, method: str, metrics: Output[Metrics]) -> str:
    """Where POVID's pairs are made: "gpu" (an LLM rewrites through the engines: vLLM) or "cpu" (nothing to make
    for method clipdpo, a plugin rewriter, or an injector on the CPU); clipdpo.steps.povid_placement."""
    from clipdpo.report.step_metrics import log_to
    from clipdpo.steps import povid_placement as placement

    where = placement(config_json, method)
    log_to(metrics, {"gpu": float(where == "gpu")})
    return where


# The LLM injection runs through the generate stage's engines (vLLM): its image, and a GPU on a cluster
@dsl.component(base_image=SETTINGS.image("generate"), install_kfp_package=False)
def povid_pairs(run_root: str, images_uri: str, config_json: str, method: str, metrics: Output[Metrics]) -> str:
    """POVID's pairs (ground truth preferred, injected hallucinations dispreferred) rewritten by an LLM: the
    branch for povid_placement "gpu"."""
    import time

    from clipdpo.report.step_metrics import log_pairs
    from clipdpo.steps import povid_step

    started = time.monotonic()
    return log_pairs(metrics, povid_step(run_root, config_json, method, images_uri=images_uri), started)


# The same step where it needs no GPU: the light filter image, CPU requests only
@dsl.component(base_image=SETTINGS.image("filter"), install_kfp_package=False)
def povid_pairs_cpu(run_root: str, images_uri: str, config_json: str, method: str, metrics: Output[Metrics]) -> str:
    """POVID's pairs where no GPU is needed (povid_placement "cpu"): a plugin rewriter, an injector on the
    CPU, or "" at once for method clipdpo."""
    import time

    from clipdpo.report.step_metrics import log_pairs
    from clipdpo.steps import povid_step

    started = time.monotonic()
    return log_pairs(metrics, povid_step(run_root, config_json, method, images_uri=images_uri), started)


@dsl.component(base_image=SETTINGS.image("filter"), install_kfp_package=False)
def training_pairs(
    run_root: str, clipdpo_pairs_uri: str, povid_pairs_uri: str, method: str, metrics: Output[Metrics]
) -> str:
    """What train consumes, by its method: the CLIP-DPO pairs, POVID's, or their union (both)."""
    import time

    from clipdpo.report.step_metrics import log_pairs
    from clipdpo.steps import training_pairs_step

    started = time.monotonic()
    return log_pairs(metrics, training_pairs_step(run_root, method, clipdpo_pairs_uri, povid_pairs_uri), started)


@dsl.component(base_image=SETTINGS.image("train"), install_kfp_package=False)
def train(
    run_root: str,
    pairs_uri: str,
    config_json: str,
    launcher: str,
    image: str,
    nodes: int,
    gpus_per_node: int,
    s3_secret: str,
    node_selector_json: str,
    tolerations_json: str,
    timeout_hours: float,
    queue_name: str,
    runtime: str,
    schedule_timeout_minutes: float,
    startup_timeout_minutes: float,
    admission_timeout_minutes: float,
    metrics: Output[Metrics],
) -> str:
    from clipdpo.report.step_metrics import logged
    from clipdpo.steps import train_step

    with logged(metrics, "train", run_root):
        return train_step(
            run_root,
            config_json,
            launcher=launcher,
            pairs_uri=pairs_uri,
            image=image,
            nodes=nodes,
            gpus_per_node=gpus_per_node,
            s3_secret=s3_secret,
            node_selector_json=node_selector_json,
            tolerations_json=tolerations_json,
            timeout_hours=timeout_hours,
            queue_name=queue_name,
            runtime=runtime,
            schedule_timeout_minutes=schedule_timeout_minutes,
            startup_timeout_minutes=startup_timeout_minutes,
            admission_timeout_minutes=admission_timeout_minutes,
        )


@dsl.component(base_image=SETTINGS.image("filter"), install_kfp_package=False)
def plan_evaluation(
    run_root: str, model_uri: str, train_config_json: str, config_json: str, metrics: Output[Metrics]
) -> List[str]:
    from clipdpo.report.step_metrics import logged
    from clipdpo.steps import evaluation_plan

    with logged(metrics, "plan-evaluation", run_root):
        return evaluation_plan(run_root, model_uri, train_config_json, config_json)


@dsl.component(base_image=SETTINGS.image("evaluate"), install_kfp_package=False)
def evaluate_task(run_root: str, train_config_json: str, config_json: str, item: str, metrics: Output[Metrics]) -> str:
    from clipdpo.report.step_metrics import logged
    from clipdpo.steps import evaluate_task_step

    with logged(metrics, "evaluate-task", run_root):
        return evaluate_task_step(run_root, train_config_json, config_json, item)


@dsl.component(base_image=SETTINGS.image("evaluate"), install_kfp_package=False)
def evaluate_merge(
    run_root: str,
    model_uri: str,
    task_records: List[str],
    train_config_json: str,
    config_json: str,
    metrics: Output[Metrics],
) -> str:
    from clipdpo.report.step_metrics import logged
    from clipdpo.steps import evaluate_merge_step

    with logged(metrics, "evaluate", run_root):
        return evaluate_merge_step(run_root, model_uri, train_config_json, config_json)


@dsl.component(base_image=SETTINGS.image("filter"), install_kfp_package=False)
def gate(run_root: str, report_uri: str, config_json: str, metrics: Output[Metrics]) -> str:
    from clipdpo.report.step_metrics import logged
    from clipdpo.steps import gate_step

    with logged(metrics, "gate", run_root):
        return gate_step(run_root, report_uri, config_json)


@dsl.component(base_image=SETTINGS.image("evaluate"), install_kfp_package=False)
def report(
    run_root: str,
    evaluation_uri: str,
    metrics: Output[Metrics],
    report_html: Output[HTML],
    report_markdown: Output[Markdown],
) -> str:
    """The run report (figures, headline, examples) as the run page's HTML and Markdown, and on S3."""
    from clipdpo.report.build import write
    from clipdpo.report.step_metrics import logged

    with logged(metrics, "report", run_root):
        written = write(run_root)
        with open(report_html.path, "w") as out:
            out.write(written.html)
        with open(report_markdown.path, "w") as out:
            out.write(written.markdown)
        return written.uri


# The run's exit task: the light filter image (kubernetes client, no ML stack); it runs however the run ends
@dsl.component(base_image=SETTINGS.image("filter"), install_kfp_package=False)
def cleanup_train_jobs(launcher: str, status: PipelineTaskFinalStatus, metrics: Output[Metrics]) -> str:
    """Delete this run's training jobs that have not finished (clipdpo.steps.cleanup_train_jobs_step: by the run's
    label; failed jobs stay for their TTL as evidence). Nothing to do for launcher `local`."""
    import json

    from clipdpo.report.step_metrics import log_to
    from clipdpo.steps import cleanup_train_jobs_step

    deleted = cleanup_train_jobs_step(launcher)
    print(json.dumps({"stage": "cleanup", "run_state": status.state, "deleted_jobs": deleted}), flush=True)
    log_to(metrics, {"deleted_jobs": float(len(deleted))})
    return ",".join(deleted)


RUN_FIELD = "metadata.labels['workflows.argoproj.io/workflow']"  # Argo labels every pod of a run with it
# A step that follows a days-long job: cluster-autoscaler and Karpenter do not evict it to consolidate nodes
LAUNCHER_ANNOTATIONS = {
    "cluster-autoscaler.kubernetes.io/safe-to-evict": "false",
    "karpenter.sh/do-not-disrupt": "true",
}
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
TASK_ROUNDS = "task_rounds"  # build_pipeline's pipeline: {task name: round} (task_rounds)


def _uri(task):
    """The URI a step returned (`.output` is ambiguous: every step also has its Metrics output)."""
    return task.outputs["Output"]


def _s3(task):
    """S3 credentials (and endpoint/region when the Secret has them) as env vars; caching on."""
    kubernetes.use_secret_as_env(task, secret_name=SETTINGS.s3_secret, secret_key_to_env=S3_SECRET_KEYS)
    kubernetes.use_secret_as_env(
        task, secret_name=SETTINGS.s3_secret, secret_key_to_env=S3_OPTIONAL_KEYS, optional=True
    )
    task.set_caching_options(True)
    return task


def _tracking(task):
    """MLflow/TensorBoard settings from the optional `clipdpo-tracking` ConfigMap (absent: no tracking)."""
    kubernetes.use_config_map_as_env(
        task, config_map_name=TRACKING_CONFIG_MAP, config_map_key_to_env=TRACKING_KEYS, optional=True
    )
    return task


def _gpu(task, values: ClusterValues):
    """One GPU, on a GPU node (selector, tolerations), in the GPU steps' Kueue queue when there is one."""
    task.set_accelerator_type(SETTINGS.gpu_resource).set_accelerator_limit(1)
    for key, value in SETTINGS.gpu_node_selector.items():
        kubernetes.add_node_selector(task, label_key=key, label_value=value)
    for toleration in SETTINGS.gpu_tolerations:
        kubernetes.add_toleration(task, **toleration)
    if values.gpu_queue_name:
        kubernetes.add_pod_label(task, label_key=KUEUE_QUEUE_LABEL, label_value=values.gpu_queue_name)
    return task


def _pod(task, values: ClusterValues):
    """The step's pod as `values` shape it, by its component's name: requests and limits, retries, timeout, image
    pull secrets, and a GPU for the GPU steps. Every task of the pipeline goes through here."""
    name = task.component_spec.name
    pod = values.step(name)
    task.set_cpu_request(pod.cpu_request).set_memory_request(pod.memory_request)
    if pod.cpu_limit:
        task.set_cpu_limit(pod.cpu_limit)
    if pod.memory_limit:
        task.set_memory_limit(pod.memory_limit)
    if pod.retries:
        task.set_retry(
            num_retries=pod.retries,
            backoff_duration=f"{values.retry_backoff_seconds}s",
            backoff_factor=values.retry_backoff_factor,
            backoff_max_duration=f"{values.retry_backoff_max_seconds}s",
        )
    if pod.timeout_minutes:
        kubernetes.set_timeout(task, pod.timeout_minutes * 60)
    if values.image_pull_secrets:
        kubernetes.set_image_pull_secrets(task, list(values.image_pull_secrets))
    return _gpu(task, values) if name in GPU_STEPS else task


def _fan_out(plan, loop: str, values: ClusterValues, shard, finalize, names: tuple[str, str]):
    """A fan-out over the items `plan` lists: the task `shard(item)` makes per item, then the task `finalize(outputs)`
    makes once every item is done; `names`: their display names. The finalize task."""
    with dsl.ParallelFor(_uri(plan), name=loop, parallelism=values.parallelism[loop]) as item:
        each = _pod(_s3(shard(item)), values).set_display_name(names[0])
    done = _s3(finalize(dsl.Collected(_uri(each))))
    return _pod(done, values).set_display_name(names[1])


def _shard_stages(run, values: ClusterValues, images):
    """generate and score, each a fan-out over the shards plan_shards lists, then a finalize step: (the plan, the
    scores)."""
    plan = _pod(plan_shards(shard_count=run.shard_count), values).set_caching_options(True)
    plan.set_display_name("plan shards")
    generate = dict(
        run_root=run.run_root, images_uri=_uri(images), config_json=run.generate_config, shard_count=run.shard_count
    )
    candidates = _fan_out(
        plan,
        "generate-shards",
        values,
        lambda i: generate_shard(shard_index=i, **generate),
        lambda outputs: generate_finalize(shard_outputs=outputs, **generate),
        ("generate shard", "generate finalize"),
    )
    score = dict(
        run_root=run.run_root,
        candidates_uri=_uri(candidates),
        config_json=run.score_config,
        shard_count=run.shard_count,
    )
    scores = _fan_out(
        plan,
        "score-shards",
        values,
        lambda i: score_shard(shard_index=i, **score),
        lambda outputs: score_finalize(shard_outputs=outputs, **score),
        ("score shard", "score finalize"),
    )
    return plan, scores


def _povid_pairs(run, values: ClusterValues, images):
    """POVID's side of what train consumes: (the train config's method, POVID's pairs). The method and the rewriter
    live in JSON parameters, so small steps read them and only an LLM rewrite holds a GPU pod; the POVID steps take
    the method alone, so another train setting does not invalidate their cache."""
    method = _pod(train_method(train_config_json=run.train_config), values)
    method.set_caching_options(True).set_display_name("train method")
    placement = _pod(povid_placement(config_json=run.povid_config, method=_uri(method)), values)
    placement.set_caching_options(True).set_display_name("povid placement")
    povid_inputs = dict(
        run_root=run.run_root, images_uri=_uri(images), config_json=run.povid_config, method=_uri(method)
    )
    with dsl.If(_uri(placement) == "gpu", name="povid-llm-on-gpu"):
        on_gpu = _pod(_s3(povid_pairs(**povid_inputs)), values).set_display_name("povid pairs (LLM, GPU)")
    with dsl.Else(name="povid-on-cpu"):
        on_cpu = _pod(_s3(povid_pairs_cpu(**povid_inputs)), values).set_display_name("povid pairs")
    return method, dsl.OneOf(_uri(on_gpu), _uri(on_cpu))


def _training_pairs(run, values: ClusterValues, pairs, method, povid):
    """What train consumes by the train config's `method`: clipdpo trains on the filter's pairs; povid on POVID's
    pairs (ground truth vs injected hallucinations; noisy-image rejections in training); both on their union."""
    chosen = _s3(
        training_pairs(
            run_root=run.run_root,
            clipdpo_pairs_uri=_uri(pairs),
            povid_pairs_uri=povid,
            method=_uri(method),
        )
    )
    return _pod(chosen, values).set_display_name("training pairs")


def _train(run, values: ClusterValues, pairs):
    """The train step: it launches the training job and follows it.

    The training job outlives this step's pod (no owner): a retry after an eviction re-attaches to it by its
    launch key (which includes the run: CLIPDPO_RUN, the Argo workflow's name on every pod of the run). The
    follower's limits count from admission: time in a Kueue queue is not a failure (train_admission_timeout_minutes:
    0, none). No step timeout (the values): the launcher's own deadline (train_timeout_hours) governs."""
    model = _tracking(
        _s3(
            train(
                run_root=run.run_root,
                pairs_uri=_uri(pairs),
                config_json=run.train_config,
                launcher=run.train_launcher,
                image=SETTINGS.image("train"),
                nodes=run.train_nodes,
                gpus_per_node=run.train_gpus_per_node,
                s3_secret=SETTINGS.s3_secret,
                node_selector_json=run.train_node_selector,
                tolerations_json=run.train_tolerations,
                timeout_hours=run.train_timeout_hours,
                queue_name=run.train_queue_name,
                runtime=run.train_runtime,
                schedule_timeout_minutes=run.train_schedule_timeout_minutes,
                startup_timeout_minutes=run.train_startup_timeout_minutes,
                admission_timeout_minutes=run.train_admission_timeout_minutes,
            )
        )
    )
    _run_env(model)
    kubernetes.use_field_path_as_env(model, env_name="CLIPDPO_POD_NAME", field_path="metadata.name")
    for key, value in LAUNCHER_ANNOTATIONS.items():  # autoscalers: do not move this pod off its node
        kubernetes.add_pod_annotation(model, annotation_key=key, annotation_value=value)
    return _pod(model, values).set_display_name("train (cluster job)")


def _run_env(task):
    """CLIPDPO_RUN: the run's Argo workflow, which labels the training job (launch) and finds it (cleanup)."""
    kubernetes.use_field_path_as_env(task, env_name="CLIPDPO_RUN", field_path=RUN_FIELD)
    return task


def _evaluate_and_gate(run, values: ClusterValues, model):
    """base vs trained: one GPU pod per (model, task) (the base's results come from the eval cache once known),
    merged into one report; then the gate and the run report (_gate_and_report)."""
    evaluation = dict(
        run_root=run.run_root,
        model_uri=_uri(model),
        train_config_json=run.train_config,
        config_json=run.evaluate_config,
    )
    items = _pod(_s3(plan_evaluation(**evaluation)), values).set_display_name("plan evaluation")  # reads the model
    # only pipeline parameters and the item enter the loop: kfp's local runner binds any other task output
    # inside a ParallelFor to the loop item (the model is where train wrote it, under run_root)
    merged = _fan_out(
        items,
        "evaluate-tasks",
        values,
        lambda item: evaluate_task(
            run_root=run.run_root,
            train_config_json=run.train_config,
            config_json=run.evaluate_config,
            item=item,
        ),
        lambda records: _tracking(evaluate_merge(task_records=records, **evaluation)),
        ("evaluate task", "evaluate report"),
    )
    _gate_and_report(run, values, merged)


def _gate_and_report(run, values: ClusterValues, evaluation):
    """The gate judges the trained model and, on pass, moves the promoted pointer; then the run report a person
    reads (figures, headline numbers, examples: kfp HTML + Markdown)."""
    decision = _pod(_s3(gate(run_root=run.run_root, report_uri=_uri(evaluation), config_json=run.gate_config)), values)
    decision.set_caching_options(False).set_display_name("gate")
    run_report = _pod(_s3(report(run_root=run.run_root, evaluation_uri=_uri(evaluation))), values)
    run_report.set_display_name("report")


def _stages(run, values: ClusterValues, rounds: int, task_rounds: dict):
    """ingest -> generate -> score -> filter -> (POVID) -> train, then for one round evaluate -> gate -> report;
    for several, the rounds after it (_round_end), each round's tasks named in `task_rounds`."""
    built_before = _task_names()  # the exit task: no round's
    images = _s3(ingest(run_root=run.run_root, source=run.source, config_json=run.ingest_config))
    _pod(images, values).set_display_name("ingest")
    plan, scores = _shard_stages(run, values, images)
    pairs = _filter(run, values, scores)
    method, povid = _povid_pairs(run, values, images)
    model = _train(run, values, _training_pairs(run, values, pairs, method, povid))
    if rounds == 1:
        _evaluate_and_gate(run, values, model)
        return
    first = SimpleNamespace(
        plan=plan, method=method, povid=povid, rounds=rounds, task_rounds=task_rounds, counted=built_before
    )
    _round_end(run, values, first, 1, model, None)


def _filter(run, values: ClusterValues, scores):
    pairs = _s3(filter_pairs(run_root=run.run_root, scores_uri=_uri(scores), config_json=run.filter_config))
    return _pod(pairs, values).set_display_name("filter")


# -- iterative rounds (clipdpo.rounds): compiled in when the pipeline is built with rounds > 1 ----------------------


def _round_end(run, values: ClusterValues, first, index: int, model, previous):
    """Round `index`'s evaluation and check (against the round before: `previous`'s decision; round 1 against the
    base). Then round index+1 where the check says so, nested in its dsl.If; where it does not, and after the last
    round, the run's evaluation (every round and the model kept), the gate and the report."""
    evaluation = _round_evaluation(run, values, index, model)
    check = _s3(
        round_check(
            run_root=run.run_root,
            round_index=index,
            evaluation_uri=_uri(evaluation),
            previous_decision=previous.outputs["decision"] if previous is not None else "",
            gate_config_json=run.gate_config,
        )
    )
    _pod(check, values).set_display_name(f"round {index} check")
    _count_round(first, index)
    if index == first.rounds:
        _rounds_finish(run, values, check)
        return
    with dsl.If(check.outputs["verdict"] == CONTINUE, name=f"round-{index + 1}"):
        later = _later_round(run, values, first, index + 1, model)
        _round_end(run, values, first, index + 1, later, check)
    with dsl.Else(name=f"rounds-stop-after-{index}"):
        _rounds_finish(run, values, check)


def _task_names() -> set[str]:
    """The tasks of the pipeline being built so far, by the names kfp gives them (unique in the pipeline; a local
    run's task folders and log lines carry them)."""
    return set(pipeline_context.Pipeline.get_default_pipeline().tasks)


def _count_round(first, index: int) -> None:
    """Round `index`'s tasks, once its check is built: every task built since the round before's check (round 1:
    since the stages began). Each round is built before the steps that end the rounds after it (the run's
    evaluation, gate, report: _rounds_finish), so those are in no round."""
    built = _task_names()
    first.task_rounds.update({name: index for name in built - first.counted})
    first.counted = built


def task_rounds(pipeline) -> dict[str, int]:
    """{task name: round} of a pipeline build_pipeline built with several rounds; {} for one round (and for a
    pipeline built elsewhere)."""
    return dict(getattr(pipeline, TASK_ROUNDS, {}))


def _round_evaluation(run, values: ClusterValues, index: int, model):
    """Round `index`'s evaluation fan-out (the base, from the eval cache once known, and the round's model) under
    <run_root>/round-<index>/evaluation; the merged evaluation."""
    evaluation = dict(
        run_root=run.run_root, round_index=index, train_config_json=run.train_config, config_json=run.evaluate_config
    )
    items = _pod(_s3(round_plan_evaluation(model_uri=_uri(model), **evaluation)), values)
    items.set_display_name(f"round {index} plan evaluation")
    return _fan_out(
        items,
        "evaluate-tasks",
        values,
        lambda item: round_evaluate_task(item=item, **evaluation),
        lambda records: _tracking(round_evaluate_merge(model_uri=_uri(model), task_records=records, **evaluation)),
        (f"round {index} evaluate task", f"round {index} evaluate report"),
    )


def _later_round(run, values: ClusterValues, first, index: int, previous_model):
    """Round `index` >= 2: the run's images captioned by the round before's model, scored, filtered into pairs, and
    a model trained from that model (also its DPO reference) under <run_root>/round-<index>; the train task."""
    start = _pod(
        _s3(
            round_start(
                run_root=run.run_root,
                round_index=index,
                model_uri=_uri(previous_model),
                train_config_json=run.train_config,
            )
        ),
        values,
    ).set_display_name(f"round {index} start")
    inputs = dict(run_root=run.run_root, round_index=index, shard_count=run.shard_count)
    generate = dict(  # round k-1's model: trained on the run's images, it orders the round after them too
        model_uri=_uri(previous_model),
        config_json=run.generate_config,
        train_config_json=run.train_config,
        **inputs,
    )
    candidates = _fan_out(
        first.plan,
        "generate-shards",
        values,
        lambda i: round_generate_shard(shard_index=i, **generate),
        lambda outputs: round_generate_finalize(shard_outputs=outputs, **generate),
        (f"round {index} generate shard", f"round {index} generate finalize"),
    )
    # outside the fan-outs the ordinary steps run on the round's root and train config (round_start's)
    this_round = SimpleNamespace(
        **{**vars(run), "run_root": start.outputs["root"], "train_config": start.outputs["train_config"]}
    )
    score = dict(candidates_uri=_uri(candidates), config_json=run.score_config, shard_count=run.shard_count)
    scores = _fan_out(
        first.plan,
        "score-shards",
        values,
        lambda i: round_score_shard(run_root=run.run_root, round_index=index, shard_index=i, **score),
        lambda outputs: score_finalize(run_root=this_round.run_root, shard_outputs=outputs, **score),
        (f"round {index} score shard", f"round {index} score finalize"),
    )
    pairs = _filter(this_round, values, scores).set_display_name(f"round {index} filter")
    chosen = _training_pairs(this_round, values, pairs, first.method, first.povid)
    chosen.set_display_name(f"round {index} training pairs")
    return _train(this_round, values, chosen).set_display_name(f"round {index} train (cluster job)")


def _rounds_finish(run, values: ClusterValues, check):
    """Once the rounds end: the run's evaluation from the rounds' (base, round1.., the kept model under the trained
    model's name), then the gate and the report, as after one round."""
    final = _tracking(
        _s3(
            rounds_evaluation(
                run_root=run.run_root,
                decision_uri=check.outputs["decision"],
                train_config_json=run.train_config,
                config_json=run.evaluate_config,
            )
        )
    )
    _gate_and_report(run, values, _pod(final, values).set_display_name("evaluate report (rounds)"))


def _cleanup(run, values: ClusterValues):
    """The run's exit task: never cached (a rerun must look for its own jobs), CLIPDPO_RUN as the train step has
    it, so it finds exactly the jobs this run launched."""
    task = _run_env(cleanup_train_jobs(launcher=run.train_launcher)).set_caching_options(False)
    return _pod(task, values).set_display_name("clean up training jobs")


def _pipeline_config(values: ClusterValues) -> dsl.PipelineConfig:
    """The run's TTL (0: not set, so not written: see ClusterValues)."""
    return dsl.PipelineConfig(
        ttl_seconds_after_success=values.ttl_seconds_after_success or None,
        ttl_seconds_after_failure=values.ttl_seconds_after_failure or None,
    )


def build_pipeline(values: ClusterValues, rounds: int = 1):
    """The clipdpo pipeline with its pods shaped by `values`: `make compile` builds it with the values of
    CLIPDPO_CLUSTER_VALUES (pipelines.compile), a local run with the same values, retries off
    (ClusterValues.for_local). `rounds`: generate -> score -> filter -> train that many times, each round from the
    model the round before trained (clipdpo.rounds); a constant of the compiled pipeline, as kfp has no loop
    whose length is known only at run time."""
    check_round(rounds)
    rounds_of: dict[str, int] = {}  # filled as kfp builds the pipeline, below

    @dsl.pipeline(
        name="clipdpo",
        description="CLIP-DPO: caption, CLIP-rank, filter into pairs, DPO-train an LVLM.",
        pipeline_config=_pipeline_config(values),
    )
    def clipdpo_pipeline(
        run_root: str = "s3://clipdpo/runs/default",
        source: str = "builtin:demo",
        shard_count: int = 4,
        ingest_config: str = "{}",
        generate_config: str = "{}",
        score_config: str = "{}",
        filter_config: str = "{}",
        train_config: str = "{}",
        train_launcher: str = "trainjob",
        train_nodes: int = 1,
        train_gpus_per_node: int = 8,
        train_node_selector: str = "{}",
        train_tolerations: str = '[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]',
        train_timeout_hours: float = 72.0,
        train_queue_name: str = "",
        train_runtime: str = DEFAULT_RUNTIME,
        train_schedule_timeout_minutes: float = 60.0,
        train_startup_timeout_minutes: float = 30.0,
        train_admission_timeout_minutes: float = 0.0,
        evaluate_config: str = "{}",
        gate_config: str = "{}",
        povid_config: str = "{}",
    ):
        # the run's parameters (a channel each) for the helpers; locals() also holds the closure's variables
        closure = ("values", "rounds", "rounds_of")
        run = SimpleNamespace(**{name: value for name, value in locals().items() if name not in closure})
        # The exit task runs when the stages end, succeeded or failed: it deletes the training jobs this run left
        # unfinished (a launcher lost with no retry left). A cancelled run's launcher deletes its job itself
        # (SIGTERM); the exit task is the second line there, as a KFP terminate may stop the run before it runs.
        with dsl.ExitHandler(_cleanup(run, values), name="clipdpo-stages"):
            _stages(run, values, rounds, rounds_of)

    setattr(clipdpo_pipeline, TASK_ROUNDS, rounds_of)
    return clipdpo_pipeline
