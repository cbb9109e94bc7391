"""Run `python -m clipdpo.train` as a PyTorchJob or TrainJob from inside a pipeline step (in-cluster credentials).

    python -m clipdpo.cluster.launch --launcher trainjob --launch-key RUN/OUTPUT --image IMAGE \
        --nodes 2 --gpus-per-node 8 [--queue-name team-gpus] -- --input s3://.../pairs --output s3://.../model

The job outlives this process's pod: it has no ownerReference, and its name comes from the launch
key, which includes the pipeline run (CLIPDPO_RUN: the Argo workflow's name, from the step pod's
`workflows.argoproj.io/workflow` label through the downward API). A retried step (its pod evicted,
its node drained) re-attaches to the running job instead of starting a second one; a new run over
the same run root starts its own.

SIGTERM (this pod being stopped) raises StepCancelled. The follower then reads this pod
(CLIPDPO_POD_NAME): a DisruptionTarget condition means an eviction, preemption or node shutdown,
and the job is left running for the retry; otherwise the run was cancelled and the job is deleted.
What a run leaves unfinished (its launcher lost and not retried, then the run cancelled or failed)
`delete_run_jobs` deletes by the job's clipdpo.dev/run label: `clipdpo.steps.cleanup_train_jobs_step`,
meant as the run's exit task. Failed jobs stay for inspection until their TTL.

Before a TrainJob is created, the Trainer's published version is checked (trainerversion.py), and every job
is created with strict field validation: an operator too old for a field the job sets refuses it in one line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import threading

from clipdpo.cluster import jobspec, pytorchjob, trainerversion, trainjob
from clipdpo.cluster.follow import JobFollower, JobLimits, StepCancelled
from clipdpo.errors import exit_2_on_user_error

log = logging.getLogger("clipdpo.cluster")
BUILDERS = {"pytorchjob": pytorchjob.build, "trainjob": trainjob.build}
POD_NAME_ENV, RUN_ENV = "CLIPDPO_POD_NAME", "CLIPDPO_RUN"


def run_from_env(environ=os.environ) -> str:
    """The pipeline run this step belongs to ('' outside a pipeline)."""
    return environ.get(RUN_ENV, "")


def run_launch_key(key: str, run: str) -> str:
    """The launch key of `key` (output + config) within pipeline run `run`: retries of a step share it,
    another run does not."""
    return f"{key}\nrun={run}" if run else key


def build_manifest(spec: jobspec.TrainJobSpec, launcher: str, launch_key: str, run: str = "") -> dict:
    try:
        builder = BUILDERS[launcher]
    except KeyError:
        raise ValueError(
            f"launcher {launcher!r}: expected one of {sorted(BUILDERS)} (or 'local' in the pipeline)"
        ) from None
    manifest = builder(spec)
    manifest["metadata"]["labels"][jobspec.LABEL_KEY] = jobspec.launch_label(launch_key)
    if run:
        manifest["metadata"]["labels"][jobspec.RUN_LABEL] = jobspec.run_label(run)
    return manifest


def kubernetes_clients():
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.CustomObjectsApi(), client.CoreV1Api()


def current_namespace(default: str = "default") -> str:
    path = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
    return open(path).read().strip() if os.path.exists(path) else default


def launcher_pod_from_env(environ=os.environ) -> tuple[str, str] | None:
    """(namespace, name) of this step's pod, when the pipeline passed its name in."""
    name = environ.get(POD_NAME_ENV, "")
    return (current_namespace(), name) if name else None


@contextlib.contextmanager
def cancel_on_sigterm():
    """SIGTERM (a cancelled run stopping this pod) raises StepCancelled in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise StepCancelled(f"signal {signum}: the pipeline step is being stopped")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def launch(
    spec: jobspec.TrainJobSpec,
    launch_key: str,
    limits: JobLimits,
    *,
    launcher: str = "pytorchjob",
    follower: JobFollower | None = None,
    cleanup: bool = True,
    run: str = "",
):
    """Create (or re-attach to) the job of `launch_key` within pipeline run `run` and follow it within `limits`
    (JobFollower.run: every limit counts from admission, 0 = none)."""
    manifest = build_manifest(spec, launcher, launch_key, run)
    if follower is None:
        follower = JobFollower(*kubernetes_clients(), launcher_pod=launcher_pod_from_env())
    if manifest["kind"] == trainjob.KIND:  # an older Trainer would drop the fields it does not know
        trainerversion.check_trainer(follower.core)
        if jobspec.runtime_ref(spec.runtime)[1] == trainjob.STOCK_RUNTIME:
            log.warning(
                "TrainJob on the stock %s runtime, which has no failurePolicy: the job fails once its pods' failures "
                "reach the Kubernetes Job default (6, counted over every node). The default runtime, %s (helm and "
                "k8s/ install it), recreates the job from its last checkpoint after each failure",
                trainjob.STOCK_RUNTIME,
                jobspec.DEFAULT_RUNTIME,
            )
    with cancel_on_sigterm():
        outcome = follower.run(manifest, limits, cleanup=cleanup)
    log.info(
        "%s %s succeeded in %.0fs%s",
        manifest["kind"],
        outcome.name,
        outcome.seconds,
        " (re-attached)" if outcome.reattached else "",
    )
    return outcome


def delete_run_jobs(namespace: str, run: str, follower: JobFollower | None = None) -> list[str]:
    """Delete the unfinished training jobs of pipeline run `run` in `namespace` (the run's exit handler)."""
    if not run:
        log.warning("no pipeline run given (%s unset): no training job to clean up", RUN_ENV)
        return []
    follower = follower or JobFollower(*kubernetes_clients())
    deleted = follower.delete_unfinished(namespace, jobspec.run_label(run))
    log.info("run %s: deleted unfinished training jobs %s", run, deleted or "(none)")
    return deleted


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m clipdpo.cluster.launch",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--launcher", choices=sorted(BUILDERS), default="pytorchjob")
    parser.add_argument("--launch-key", required=True, help="stable per output + config (re-attach key)")
    parser.add_argument("--run", default=None, help=f"pipeline run (default: ${RUN_ENV}); part of the launch key")
    parser.add_argument("--image", required=True)
    parser.add_argument("--namespace", default=None)
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--gpus-per-node", type=int, default=8)
    parser.add_argument("--cpu", default="16")
    parser.add_argument("--memory", default="256Gi")
    parser.add_argument("--shm-size", default="64Gi")
    parser.add_argument("--s3-secret", default="clipdpo-s3")
    parser.add_argument("--service-account", default="clipdpo-train")
    parser.add_argument("--node-selector", default="{}", help="JSON object")
    parser.add_argument("--tolerations", default="[]", help="JSON list")
    parser.add_argument("--queue-name", default="", help="Kueue LocalQueue (gang admission)")
    parser.add_argument("--gang", action="store_true", help="PyTorchJob: schedulingPolicy.minAvailable = all")
    parser.add_argument(
        "--runtime",
        default=jobspec.DEFAULT_RUNTIME,
        help="TrainJob: its runtime, <kind>/<name> or a ClusterTrainingRuntime's name",
    )
    parser.add_argument(
        "--backoff-limit",
        type=int,
        default=jobspec.DEFAULT_RESTARTS,
        help="failures of a pod the job survives (PyTorchJob: its restart budget; TrainJob: the runtime's "
        "maxRestarts decides); a crash loop fails the step only past them",
    )
    parser.add_argument("--timeout-hours", type=float, default=72.0)
    parser.add_argument(
        "--schedule-timeout-minutes",
        type=float,
        default=60.0,
        help="fail when the pods are not all scheduled this long after admission (0: wait)",
    )
    parser.add_argument(
        "--admission-timeout-minutes",
        type=float,
        default=0.0,
        help="fail (leaving the job queued) when Kueue has not admitted it by then (0: wait)",
    )
    parser.add_argument(
        "--startup-timeout-minutes",
        type=float,
        default=30.0,
        help="fail when the containers have not started this long after every pod was placed",
    )
    parser.add_argument("--keep-job", action="store_true", help="do not delete the job when it succeeded")
    return parser


@exit_2_on_user_error
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    train_args = argv[argv.index("--") + 1 :] if "--" in argv else []
    args = build_parser().parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    namespace = args.namespace or current_namespace()
    run = run_from_env() if args.run is None else args.run
    key = run_launch_key(args.launch_key, run)
    spec = jobspec.TrainJobSpec(
        name=jobspec.job_name(key),
        namespace=namespace,
        image=args.image,
        train_args=train_args,
        nodes=args.nodes,
        gpus_per_node=args.gpus_per_node,
        cpu=args.cpu,
        memory=args.memory,
        shm_size=args.shm_size,
        s3_secret=args.s3_secret,
        service_account=args.service_account,
        node_selector=json.loads(args.node_selector),
        tolerations=json.loads(args.tolerations),
        active_deadline_seconds=int(args.timeout_hours * 3600),
        backoff_limit=args.backoff_limit,
        queue_name=args.queue_name,
        gang=args.gang,
        runtime=args.runtime,
    )
    limits = JobLimits(
        timeout_seconds=args.timeout_hours * 3600 + 600,
        schedule_timeout_seconds=args.schedule_timeout_minutes * 60,
        admission_timeout_seconds=args.admission_timeout_minutes * 60,
        startup_timeout_seconds=args.startup_timeout_minutes * 60,
    )
    launch(spec, key, limits, launcher=args.launcher, cleanup=not args.keep_job, run=run)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
