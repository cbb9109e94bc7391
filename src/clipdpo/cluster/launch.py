"""Run `python -m clipdpo.train` as a PyTorchJob or TrainJob from inside a pipeline step (in-cluster credentials).

    python -m clipdpo.cluster.launch --launcher trainjob --launch-key RUN/OUTPUT --image IMAGE \
        --nodes 2 --gpus-per-node 8 [--queue-name team-gpus] -- --input s3://.../pairs --output s3://.../model

Cancelling the pipeline run deletes the job two ways: kfp stops the step's pod with SIGTERM, which
this process turns into StepCancelled (the follower deletes the job before exiting); and the job
names the step's pod as its owner (CLIPDPO_POD_NAME / CLIPDPO_POD_UID from the downward API), so
Kubernetes' garbage collector deletes it with the pod even if the step is killed outright.
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

from clipdpo.cluster import jobspec, pytorchjob, trainjob
from clipdpo.cluster.follow import JobFollower, StepCancelled

log = logging.getLogger("clipdpo.cluster")
BUILDERS = {"pytorchjob": pytorchjob.build, "trainjob": trainjob.build}
POD_NAME_ENV, POD_UID_ENV = "CLIPDPO_POD_NAME", "CLIPDPO_POD_UID"


def build_manifest(spec: jobspec.TrainJobSpec, launcher: str, launch_key: str) -> dict:
    try:
        builder = BUILDERS[launcher]
    except KeyError:
        raise ValueError(f"launcher {launcher!r}: expected one of {sorted(BUILDERS)} (or 'local' in the pipeline)")
    manifest = builder(spec)
    manifest["metadata"]["labels"][jobspec.LABEL_KEY] = jobspec.launch_label(launch_key)
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


def owner_from_env(environ=os.environ) -> dict | None:
    """An ownerReference to this step's pod, when the pipeline passed its name and uid in."""
    name, uid = environ.get(POD_NAME_ENV, ""), environ.get(POD_UID_ENV, "")
    if not (name and uid):
        return None
    # blockOwnerDeletion needs update rights on the pod's finalizers; the GC deletes the job either way
    return {"apiVersion": "v1", "kind": "Pod", "name": name, "uid": uid, "controller": False,
            "blockOwnerDeletion": False}


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


def launch(spec: jobspec.TrainJobSpec, launch_key: str, *, timeout_seconds: float, launcher: str = "pytorchjob",
           schedule_timeout_seconds: float = 0, follower: JobFollower | None = None, cleanup: bool = True):
    manifest = build_manifest(spec, launcher, launch_key)
    if follower is None:
        follower = JobFollower(*kubernetes_clients())
    with cancel_on_sigterm():
        outcome = follower.run(manifest, timeout_seconds=timeout_seconds, cleanup=cleanup,
                               schedule_timeout_seconds=schedule_timeout_seconds)
    log.info("%s %s succeeded in %.0fs%s", manifest["kind"], outcome.name, outcome.seconds,
             " (re-attached)" if outcome.reattached else "")
    return outcome


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m clipdpo.cluster.launch", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--launcher", choices=sorted(BUILDERS), default="pytorchjob")
    parser.add_argument("--launch-key", required=True, help="stable per pipeline run + output (re-attach key)")
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
    parser.add_argument("--runtime", default="torch-distributed", help="TrainJob: ClusterTrainingRuntime name")
    parser.add_argument("--backoff-limit", type=int, default=3, help="PyTorchJob: pod restarts before failing")
    parser.add_argument("--timeout-hours", type=float, default=72.0)
    parser.add_argument("--schedule-timeout-minutes", type=float, default=60.0,
                        help="fail when the pods are not all scheduled by then (0: wait)")
    parser.add_argument("--keep-job", action="store_true", help="do not delete the job at the end")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    train_args = argv[argv.index("--") + 1:] if "--" in argv else []
    args = build_parser().parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    namespace = args.namespace or current_namespace()
    spec = jobspec.TrainJobSpec(
        name=jobspec.job_name(args.launch_key), namespace=namespace,
        image=args.image, train_args=train_args, nodes=args.nodes, gpus_per_node=args.gpus_per_node, cpu=args.cpu,
        memory=args.memory, shm_size=args.shm_size, s3_secret=args.s3_secret, service_account=args.service_account,
        node_selector=json.loads(args.node_selector), tolerations=json.loads(args.tolerations),
        active_deadline_seconds=int(args.timeout_hours * 3600), backoff_limit=args.backoff_limit,
        queue_name=args.queue_name, gang=args.gang, runtime=args.runtime,
        owner=owner_from_env() if namespace == current_namespace() else None)  # owners: same namespace only
    launch(spec, args.launch_key, launcher=args.launcher, timeout_seconds=args.timeout_hours * 3600 + 600,
           schedule_timeout_seconds=args.schedule_timeout_minutes * 60, cleanup=not args.keep_job)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
