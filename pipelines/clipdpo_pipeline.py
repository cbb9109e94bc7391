"""The clipdpo pipeline: ingest -> generate (fan-out) -> score (fan-out) -> filter -> train -> evaluate
(fan-out over (model, task), merged into one report) -> gate (promote the trained model or refuse it).

Every component runs its stage's own image and calls `clipdpo.steps`; no stage logic lives
here. Artifacts pass through S3 under `run_root` (a pipeline parameter); components read and
write S3 themselves with credentials from the S3 Secret. kfp caching is on for every step, so a
rerun with unchanged inputs and configs reuses finished steps (and the stages themselves skip
complete artifacts). Each stage config travels as a JSON-object parameter; the step turns it into
the stage's typed config and calls the stage's `run` (train on a cluster: a PyTorchJob reading the
config from `<run_root>/configs/train.json`).
"""

# No `from __future__ import annotations`: kfp reads the component signatures' real types.
from typing import List

from kfp import dsl, kubernetes
from kfp.dsl import HTML, Markdown, Metrics, Output

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


RUN_FIELD = "metadata.labels['workflows.argoproj.io/workflow']"  # Argo labels every pod of a run with it
# A step that follows a days-long job: cluster-autoscaler and Karpenter do not evict it to consolidate nodes
LAUNCHER_ANNOTATIONS = {
    "cluster-autoscaler.kubernetes.io/safe-to-evict": "false",
    "karpenter.sh/do-not-disrupt": "true",
}


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


def _gpu(task, gpus: int = 1, memory: str = "64G"):
    task.set_accelerator_type(SETTINGS.gpu_resource).set_accelerator_limit(gpus)
    task.set_cpu_request("8").set_memory_request(memory)
    for key, value in SETTINGS.gpu_node_selector.items():
        kubernetes.add_node_selector(task, label_key=key, label_value=value)
    for toleration in SETTINGS.gpu_tolerations:
        kubernetes.add_toleration(task, **toleration)
    return task


@dsl.pipeline(name="clipdpo", description="CLIP-DPO: caption, CLIP-rank, filter into pairs, DPO-train an LVLM.")
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
    train_runtime: str = "torch-distributed",
    train_schedule_timeout_minutes: float = 60.0,
    train_startup_timeout_minutes: float = 30.0,
    train_admission_timeout_minutes: float = 0.0,
    evaluate_config: str = "{}",
    gate_config: str = "{}",
    povid_config: str = "{}",
):
    images = _s3(ingest(run_root=run_root, source=source, config_json=ingest_config))
    images.set_cpu_request("2").set_memory_request("8G").set_display_name("ingest")

    plan = plan_shards(shard_count=shard_count).set_caching_options(True).set_display_name("plan shards")
    with dsl.ParallelFor(items=_uri(plan), name="generate-shards") as shard:
        generated = _gpu(
            _s3(
                generate_shard(
                    run_root=run_root,
                    images_uri=_uri(images),
                    config_json=generate_config,
                    shard_index=shard,
                    shard_count=shard_count,
                )
            )
        )
        generated.set_display_name("generate shard")
    candidates = _s3(
        generate_finalize(
            run_root=run_root,
            images_uri=_uri(images),
            shard_outputs=dsl.Collected(_uri(generated)),
            config_json=generate_config,
            shard_count=shard_count,
        )
    )
    candidates.set_cpu_request("1").set_memory_request("2G").set_display_name("generate finalize")

    with dsl.ParallelFor(items=_uri(plan), name="score-shards") as shard:
        scored = _gpu(
            _s3(
                score_shard(
                    run_root=run_root,
                    candidates_uri=_uri(candidates),
                    config_json=score_config,
                    shard_index=shard,
                    shard_count=shard_count,
                )
            ),
            memory="32G",
        )
        scored.set_display_name("score shard")
    scores = _s3(
        score_finalize(
            run_root=run_root,
            candidates_uri=_uri(candidates),
            shard_outputs=dsl.Collected(_uri(scored)),
            config_json=score_config,
            shard_count=shard_count,
        )
    )
    scores.set_cpu_request("1").set_memory_request("2G").set_display_name("score finalize")

    pairs = _s3(filter_pairs(run_root=run_root, scores_uri=_uri(scores), config_json=filter_config))
    pairs.set_cpu_request("4").set_memory_request("8G").set_display_name("filter")

    # method (train_config's `method`): clipdpo trains on the filter's pairs; povid on POVID's pairs (ground truth
    # vs injected hallucinations; noisy-image rejections in training); both on their union. The method and the
    # rewriter live in JSON parameters, so small steps read them and only an LLM rewrite holds a GPU pod; the
    # POVID steps take the method alone, so another train setting does not invalidate their cache.
    method = train_method(train_config_json=train_config)
    method.set_caching_options(True).set_cpu_request("1").set_memory_request("1G").set_display_name("train method")
    placement = povid_placement(config_json=povid_config, method=_uri(method))
    placement.set_caching_options(True).set_cpu_request("1").set_memory_request("1G").set_display_name(
        "povid placement"
    )
    povid_inputs = dict(run_root=run_root, images_uri=_uri(images), config_json=povid_config, method=_uri(method))
    with dsl.If(_uri(placement) == "gpu", name="povid-llm-on-gpu"):
        on_gpu = _gpu(_s3(povid_pairs(**povid_inputs)), memory="32G").set_display_name("povid pairs (LLM, GPU)")
    with dsl.Else(name="povid-on-cpu"):
        on_cpu = _s3(povid_pairs_cpu(**povid_inputs)).set_cpu_request("2").set_memory_request("8G")
        on_cpu.set_display_name("povid pairs")
    chosen = _s3(
        training_pairs(
            run_root=run_root,
            clipdpo_pairs_uri=_uri(pairs),
            povid_pairs_uri=dsl.OneOf(_uri(on_gpu), _uri(on_cpu)),
            method=_uri(method),
        )
    )
    chosen.set_cpu_request("1").set_memory_request("2G").set_display_name("training pairs")

    # The training job outlives this step's pod (no owner): a retry after an eviction re-attaches to it by its
    # launch key (which includes the run: CLIPDPO_RUN, the Argo workflow's name on every pod of the run). The
    # follower's limits count from admission: time in a Kueue queue is not a failure
    # (train_admission_timeout_minutes: 0, none).
    model = _tracking(
        _s3(
            train(
                run_root=run_root,
                pairs_uri=_uri(chosen),
                config_json=train_config,
                launcher=train_launcher,
                image=SETTINGS.image("train"),
                nodes=train_nodes,
                gpus_per_node=train_gpus_per_node,
                s3_secret=SETTINGS.s3_secret,
                node_selector_json=train_node_selector,
                tolerations_json=train_tolerations,
                timeout_hours=train_timeout_hours,
                queue_name=train_queue_name,
                runtime=train_runtime,
                schedule_timeout_minutes=train_schedule_timeout_minutes,
                startup_timeout_minutes=train_startup_timeout_minutes,
                admission_timeout_minutes=train_admission_timeout_minutes,
            )
        )
    )
    # No step timeout: the launcher's own deadline (train_timeout_hours) governs. Retries: a launcher pod lost to
    # a drain or preemption comes back and follows the same job.
    model.set_retry(num_retries=3, backoff_duration="60s", backoff_factor=2.0)
    kubernetes.use_field_path_as_env(model, env_name="CLIPDPO_RUN", field_path=RUN_FIELD)
    kubernetes.use_field_path_as_env(model, env_name="CLIPDPO_POD_NAME", field_path="metadata.name")
    for key, value in LAUNCHER_ANNOTATIONS.items():  # autoscalers: do not move this pod off its node
        kubernetes.add_pod_annotation(model, annotation_key=key, annotation_value=value)
    model.set_cpu_request("1").set_memory_request("2G").set_display_name("train (cluster job)")

    # base vs trained: one GPU pod per (model, task) (the base's results come from the eval cache once known),
    # merged into one report; then the gate judges the trained model and, on pass, moves the promoted pointer
    evaluation = dict(
        run_root=run_root, model_uri=_uri(model), train_config_json=train_config, config_json=evaluate_config
    )
    items = _s3(plan_evaluation(**evaluation)).set_display_name("plan evaluation")  # reads the model (LoRA?)
    # only pipeline parameters and the item enter the loop: kfp's local runner binds any other task output
    # inside a ParallelFor to the loop item (the model is where train wrote it, under run_root)
    with dsl.ParallelFor(items=_uri(items), name="evaluate-tasks") as item:
        task = _gpu(
            _s3(
                evaluate_task(run_root=run_root, train_config_json=train_config, config_json=evaluate_config, item=item)
            ),
            memory="64G",
        ).set_display_name("evaluate task")
    merged = _tracking(_s3(evaluate_merge(task_records=dsl.Collected(_uri(task)), **evaluation)))
    merged.set_cpu_request("2").set_memory_request("8G").set_display_name("evaluate report")
    decision = _s3(gate(run_root=run_root, report_uri=_uri(merged), config_json=gate_config))
    decision.set_caching_options(False).set_cpu_request("1").set_memory_request("2G").set_display_name("gate")

    # what a person reads: figures, headline numbers, examples (kfp HTML + Markdown on the run page)
    run_report = _s3(report(run_root=run_root, evaluation_uri=_uri(merged)))
    run_report.set_cpu_request("2").set_memory_request("4G").set_display_name("report")
