"""Run `python -m clipdpo.train` as a PyTorchJob from inside a pipeline step (in-cluster credentials).

    python -m clipdpo.cluster.launch --launch-key RUN/OUTPUT --image IMAGE --namespace NS \
        --nodes 2 --gpus-per-node 8 -- --input s3://.../pairs --output s3://.../model --set ...
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from clipdpo.cluster import pytorchjob
from clipdpo.cluster.follow import JobFollower

log = logging.getLogger("clipdpo.cluster")


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


def launch(spec: pytorchjob.TrainJobSpec, launch_key: str, *, timeout_seconds: float, follower: JobFollower | None = None,
           cleanup: bool = True):
    manifest = pytorchjob.build(spec)
    manifest["metadata"]["labels"][pytorchjob.LABEL_KEY] = pytorchjob.launch_label(launch_key)
    if follower is None:
        follower = JobFollower(*kubernetes_clients())
    outcome = follower.run(manifest, timeout_seconds=timeout_seconds, cleanup=cleanup)
    log.info("PyTorchJob %s succeeded in %.0fs%s", outcome.name, outcome.seconds,
             " (re-attached)" if outcome.reattached else "")
    return outcome


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    train_args = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(prog="python -m clipdpo.cluster.launch", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
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
    parser.add_argument("--timeout-hours", type=float, default=72.0)
    parser.add_argument("--keep-job", action="store_true", help="do not delete the PyTorchJob at the end")
    args = parser.parse_args(own)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    spec = pytorchjob.TrainJobSpec(
        name=pytorchjob.job_name(args.launch_key), namespace=args.namespace or current_namespace(),
        image=args.image, train_args=train_args, nodes=args.nodes, gpus_per_node=args.gpus_per_node, cpu=args.cpu,
        memory=args.memory, shm_size=args.shm_size, s3_secret=args.s3_secret, service_account=args.service_account,
        node_selector=json.loads(args.node_selector), tolerations=json.loads(args.tolerations),
        active_deadline_seconds=int(args.timeout_hours * 3600))
    launch(spec, args.launch_key, timeout_seconds=args.timeout_hours * 3600, cleanup=not args.keep_job)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
