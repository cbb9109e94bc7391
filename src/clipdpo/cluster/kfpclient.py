"""The Kubeflow Pipelines client, with the credentials in the environment, and CI's view of its retraining runs.

    python -m clipdpo.cluster.kfpclient guard  --prefix clipdpo-ci-main-     exit 3 while such a run is active
    python -m clipdpo.cluster.kfpclient latest --prefix clipdpo-ci-main- [--github-output FILE]
    python -m clipdpo.cluster.kfpclient cancel --prefix clipdpo-first-run     terminate the active runs so named

A multi-user Kubeflow answers 401 to a client without credentials: `KFP_TOKEN` (or a file named by
`KFP_TOKEN_FILE`, e.g. a projected ServiceAccount token) is sent as `Authorization: Bearer <token>`.
CI submits a retraining and returns; `guard` keeps one retraining per branch active at a time (GitHub's
concurrency group covers only the few minutes of the submitting job), and a scheduled job asks `latest`
whether the branch's newest run has ended, then reads that run's gate decision.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass

TOKEN_ENV, TOKEN_FILE_ENV = "KFP_TOKEN", "KFP_TOKEN_FILE"
# KFP v2 run states (V2beta1RuntimeState): these have ended; any other (PENDING, RUNNING, PAUSED, CANCELING,
# RUNTIME_STATE_UNSPECIFIED) may still start or hold pods.
ENDED_STATES = frozenset({"SUCCEEDED", "SKIPPED", "FAILED", "CANCELED"})
RUN_NAME_PREFIX = "clipdpo-"  # pipelines/run.py names a run clipdpo-<run id>


class KfpConfigError(ValueError):
    """Bad KFP settings in the environment (exit 2, one line)."""


def token_from_env(env: Mapping[str, str] = os.environ) -> str | None:
    """The bearer token for the KFP API: KFP_TOKEN, else the contents of the file KFP_TOKEN_FILE; None if neither."""
    token = env.get(TOKEN_ENV, "").strip()
    if token:
        return token
    path = env.get(TOKEN_FILE_ENV, "")
    if not path:
        return None
    try:
        token = open(path).read().strip()
    except OSError as err:
        raise KfpConfigError(f"{TOKEN_FILE_ENV}={path}: cannot be read ({err.strerror})") from None
    if not token:
        raise KfpConfigError(f"{TOKEN_FILE_ENV}={path}: the file is empty; expected a bearer token")
    return token


def client_arguments(host: str, namespace: str | None = None, env: Mapping[str, str] = os.environ) -> dict:
    """kfp.Client's keyword arguments: the endpoint, the namespace (multi-user) and the token if one is set."""
    if not host:
        raise KfpConfigError(
            "KFP_HOST is empty; expected the Kubeflow Pipelines endpoint, e.g. https://kfp.example.com"
        )
    arguments: dict = {"host": host, "namespace": namespace or None}
    token = token_from_env(env)
    if token:
        arguments["existing_token"] = token
    return arguments


def make_client(host: str, namespace: str | None = None, env: Mapping[str, str] = os.environ):
    """A kfp.Client for `host` that sends the environment's credentials."""
    import kfp

    return kfp.Client(**client_arguments(host, namespace, env))


@dataclass(frozen=True)
class RunView:
    run_id: str  # KFP's
    name: str  # display name: clipdpo-<clipdpo run id>
    state: str

    @property
    def ended(self) -> bool:
        return self.state in ENDED_STATES

    @property
    def clipdpo_run_id(self) -> str:
        """The run id the pipeline's artifacts live under (s3://<bucket>/runs/<this>)."""
        return self.name[len(RUN_NAME_PREFIX) :] if self.name.startswith(RUN_NAME_PREFIX) else self.name


def runs_with_prefix(
    client, experiment: str, prefix: str, namespace: str | None = None, pages: int = 5
) -> list[RunView]:
    """The experiment's runs whose display name starts with `prefix`, newest first."""
    try:
        experiment_id = client.get_experiment(experiment_name=experiment, namespace=namespace).experiment_id
    except ValueError:  # no such experiment yet: no runs
        return []
    found, token = [], ""
    for _ in range(pages):
        response = client.list_runs(
            page_token=token, page_size=100, sort_by="created_at desc", experiment_id=experiment_id
        )
        for run in response.runs or []:
            if (run.display_name or "").startswith(prefix):
                found.append(RunView(run.run_id, run.display_name, str(run.state or "RUNTIME_STATE_UNSPECIFIED")))
        token = response.next_page_token
        if not token:
            break
    return found


def active_runs(runs: list[RunView]) -> list[RunView]:
    return [run for run in runs if not run.ended]


def cancel(client, runs: list[RunView]) -> list[RunView]:
    """Terminate each active run of `runs` (KFP stops its pods): the train step's launcher deletes its training job
    on the SIGTERM, and the run's exit task deletes any the run still left unfinished. The runs it terminated."""
    active = active_runs(runs)
    for run in active:
        client.terminate_run(run.run_id)
        print(f"terminated {run.name} (KFP run {run.run_id}, was {run.state})")
    return active


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m clipdpo.cluster.kfpclient",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", choices=["guard", "latest", "cancel"])
    parser.add_argument("--prefix", required=True, help="run display-name prefix, e.g. clipdpo-ci-main-")
    parser.add_argument("--experiment", default=os.environ.get("KFP_EXPERIMENT", "clipdpo"))
    parser.add_argument("--namespace", default=os.environ.get("KFP_NAMESPACE", ""))
    parser.add_argument("--github-output", default="", help="append state=, run_id=, kfp_run_id= to this file")
    args = parser.parse_args(argv)
    try:
        client = make_client(os.environ.get("KFP_HOST", ""), args.namespace or None)
    except KfpConfigError as err:
        print(err, file=sys.stderr)
        return 2
    runs = runs_with_prefix(client, args.experiment, args.prefix, args.namespace or None)
    if args.command == "cancel":
        if not cancel(client, runs):
            print(f"no active run named {args.prefix}*: nothing to cancel", file=sys.stderr)
        return 0
    if args.command == "guard":
        active = active_runs(runs)
        if active:
            print(
                f"a retraining is still active for {args.prefix}*: "
                + ", ".join(f"{r.name} ({r.state}, KFP run {r.run_id})" for r in active)
                + "; one at a time per branch: not submitting another",
                file=sys.stderr,
            )
            return 3
        print(f"no active run named {args.prefix}*: submitting")
        return 0
    latest = runs[0] if runs else None
    state = latest.state if latest else "NONE"
    print(f"newest run {latest.name if latest else '-'}: {state}")
    if args.github_output:
        with open(args.github_output, "a") as handle:
            handle.write(
                f"state={state}\nended={'true' if latest and latest.ended else 'false'}\n"
                f"run_id={latest.clipdpo_run_id if latest else ''}\nkfp_run_id={latest.run_id if latest else ''}\n"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
