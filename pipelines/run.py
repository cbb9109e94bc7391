"""python -m pipelines.run: run the clipdpo pipeline on a cluster (KFP_HOST set) or on this machine.

Cluster: compiles the pipeline for the configured images and submits it to the Kubeflow Pipelines
endpoint in KFP_HOST; prints the run URL. Stage configs come from --config-dir (<stage>.json).

Local (no KFP_HOST): the same pipeline definition runs through kfp's local SubprocessRunner, each
component as a subprocess in this environment; artifacts go to a loopback S3 server (SeaweedFS,
started here unless AWS_ENDPOINT_URL is set); with no --config-dir the built-in demo (tiny models
built from configs, the 10 built-in images) is used and training runs in-process.
`--set STAGE.KEY=VALUE` changes one config value: locally that stage reruns with every stage after it,
and only those (each step's output carries the version of what it wrote: clipdpo.outputref).
Every config is parsed into its typed class before anything is compiled, submitted or run
(clipdpo.stages.validate): a typo in a key fails here, not after the GPU fan-outs.
Locally, kfp's cache entries whose artifacts are gone, replaced or damaged are dropped first (pipelines/local_cache.py),
and the terminal shows one line per step; kfp's executor output goes to <state-dir>/logs/ (--verbose: shown).
SIGTERM or Ctrl-C ends every process the local run started; it exits with 128 + the signal (pipelines/local_stop.py).

`run_local` is also the entry for experiments (the clipdpo_lab package runs the synthetic world through it):
they pass their own stage configs and what to do after the pipeline.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from clipdpo.cluster.jobspec import DEFAULT_RUNTIME, runtime_ref
from clipdpo.errors import ArgumentParser, exit_2_on_user_error
from clipdpo.report import REPORT_DIR
from clipdpo.stages import CONFIG_NAMES, STAGES, stage, validate
from pipelines.local_output import ANSI, StepEnds, steps_only
from pipelines.local_stop import StopOnSignal


def pipeline_arguments(args, configs: dict[str, dict], launcher: str) -> dict:
    arguments = {
        "run_root": args.run_root or f"s3://{args.bucket}/runs/{args.run_id}",
        "source": args.source or configs.get("ingest", {}).get("source", "builtin:demo"),
        "shard_count": args.shards,
        "train_launcher": launcher,
        "train_nodes": args.train_nodes,
        "train_gpus_per_node": args.gpus_per_node,
    }
    if launcher != "local":  # cluster runs: Kueue queue (empty: none), how long the job may wait in it
        arguments.update(
            train_queue_name=args.queue_name,
            train_runtime=args.runtime,
            train_admission_timeout_minutes=args.admission_timeout_minutes,
        )
    for name in CONFIG_NAMES:
        arguments[f"{name}_config"] = json.dumps(configs.get(name, {}), sort_keys=True)
    return arguments


def with_overrides(configs: dict[str, dict], overrides: list[str]) -> dict[str, dict]:
    """`configs` with each `stage.key=value` of --set applied (values parse as JSON)."""
    from clipdpo.config import apply_overrides

    return apply_overrides(configs, overrides) if overrides else configs


def read_configs(config_dir: Path) -> dict[str, dict]:
    """Stage configs from `<config_dir>/<stage>.json`; a missing file means the stage's defaults."""
    configs = {}
    # gate.json: the promotion gate's rules (clipdpo.gate.GateConfig); povid.json: POVID's pairs source
    # (clipdpo.generate.povid_source.PovidSourceConfig), used when train.json's method is povid or both
    for name in CONFIG_NAMES:
        path = config_dir / f"{name}.json"
        configs[name] = json.loads(path.read_text()) if path.exists() else {}
    return configs


def local_configs(args, state: Path) -> dict[str, dict]:
    """The stage configs of a local run: --config-dir, or the built-in demo."""
    if args.config_dir:
        return read_configs(Path(args.config_dir))
    from clipdpo.demo.configs import write_demo_configs

    return write_demo_configs(state / "configs", state / "models")


class StepFailed(RuntimeError):
    """A pipeline step failed in a local run; the terminal already shows that step's own error line."""


@dataclass
class LocalRun:
    """What a local run runs: its stage configs and, for experiments, what happens around the pipeline.
    `after_pipeline(run_root)` runs once the kfp pipeline has finished (before the reports are copied);
    `after_summary(reports_dir)` prints what the experiment adds once the summary is out."""

    configs: dict[str, dict]
    label: str = "demo"
    after_pipeline: Callable[[str], None] | None = None
    after_summary: Callable[[Path], None] | None = None


def local_content_tags(root: Path = Path(__file__).resolve().parent.parent) -> None:
    """Locally, each stage's "image" is its content tag (clipdpo.cluster.imagetags: a hash of the source files the
    stage can import, its lockfile and Dockerfile) unless CLIPDPO_IMAGE_TAGS is set: kfp's local cache keys a step
    by its image and inputs, so with one version tag a step whose code changed was served from the cache.
    Only before the pipeline's settings are imported (its components read the tags when they are defined): a
    process that imported them first (a test running several pipelines in one process) keeps the tags it has."""
    if (
        os.environ.get("CLIPDPO_IMAGE_TAGS")
        or not (root / "Dockerfiles").is_dir()
        or "pipelines.settings" in sys.modules
    ):
        return  # chosen by the user, an installed package without the image sources, or too late: as they are
    from clipdpo.cluster.imagetags import stage_tag
    from clipdpo.stages import IMAGES

    try:
        os.environ["CLIPDPO_IMAGE_TAGS"] = json.dumps({name: stage_tag(str(root), name) for name in IMAGES})
    except (OSError, ValueError) as err:  # a checkout whose image files do not hash: keep the version tag
        print(f"local run: stage content tags unavailable ({err}); kfp's cache keys on the version tag", flush=True)


def run_local(args, run: LocalRun) -> int:
    """The kfp pipeline on this machine with `run.configs` (already validated, --set applied)."""
    from clipdpo import s3server

    local_content_tags()
    state = Path(args.state_dir).resolve()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.verify:  # read by the cache check below and by every step (the components inherit it)
        from clipdpo.integrity import VERIFY_ENV

        os.environ[VERIFY_ENV] = args.verify
    server = None
    if not os.environ.get("AWS_ENDPOINT_URL"):
        server = s3server.start(str(state / "s3"))
        os.environ.update(server.env)  # the components (subprocesses) inherit it
        print(f"started loopback S3 server at {server.endpoint_url} (data in {state / 's3'})", flush=True)
    arguments = pipeline_arguments(args, run.configs, launcher="local")
    from clipdpo.report.local_summary import run_dirs

    earlier_runs = set(run_dirs(str(state / "kfp"), "clipdpo"))  # the summary tells this run's steps apart
    started = time.monotonic()
    stop = StopOnSignal()  # SIGTERM, Ctrl-C: the processes the run started end with it
    try:
        with stop:
            this_run = run_kfp(args, arguments, state, run.label)
            print(f"kfp pipeline finished in {time.monotonic() - started:.1f}s", flush=True)
            if run.after_pipeline is not None:
                run.after_pipeline(arguments["run_root"])
            reports = copy_reports(arguments["run_root"], state / "reports" / args.run_id)
            summary = local_summary(
                state, arguments["run_root"], state / "reports" / args.run_id, earlier_runs, this_run
            )
            decision = print_decision(arguments["run_root"])
            rounds_line = print_rounds(arguments["run_root"], args.rounds)
    except BaseException:
        if stop.signum is None:  # stopped: whatever the unwinding raised (RunStopped, a step killed), the stop is news
            note = server.death_note() if server is not None else None
            if note:  # the components each saw an unreachable endpoint; the cause is the run's own server
                print(note, file=sys.stderr, flush=True)
            raise
    finally:
        if server is not None:
            server.stop()
    if stop.signum is not None:
        print(stop.summary(), file=sys.stderr, flush=True)
        return 128 + stop.signum
    root, copied = arguments["run_root"], state / "reports" / args.run_id
    print(f"\nrun finished in {time.monotonic() - started:.1f}s (kfp local runner); artifacts under {root}/:")
    print_outputs(root, copied, reports, decision, state, rounds_line, own_server=server is not None)
    if rounds_line:  # the model kept, in the summary too
        summary += f"\nrounds: {rounds_line}"
    if run.after_summary is not None and reports:
        run.after_summary(copied)
    print("\n" + summary)
    return 0


def print_outputs(
    root: str, copied: Path, reports: list[Path], decision: str, state: Path, rounds: str, own_server: bool
) -> None:
    """Where a finished local run's artifacts are, one line each: under `root`, the `reports` copied into `copied`,
    kfp's folder in `state`; the gate's `decision`; a run of several rounds: theirs (`rounds`: the verdicts, ""
    for one round); how to serve the S3 data again when the run started its own server."""
    for each in STAGES:
        print(f"  {each.artifact:<10} {root}/{each.artifact}")
    print(f"  report     {root}/{REPORT_DIR}/report.html (figures, examples; report.md, headline.json, PNGs)")
    print(
        f"             {root}/{stage('evaluate').artifact}/report.md (the evaluation's tables; report.html, "
        "metrics.json)"
    )
    if reports:
        print(f"  copied to  {copied}/ ({len(reports)} files)")
    print(f"  kfp        {state / 'kfp'}/ (per task: its Metrics; the report step's HTML and Markdown)")
    print(f"  TRL data   {root}/{stage('filter').artifact}/export/trl/*.parquet")
    print(f"  gate       {root}/gate/decision.json: {decision}")
    if rounds:  # round 1's artifacts are the ones above
        print(f"  rounds     {root}/round-<k>/ (from round 2: its artifacts; each round: evaluation/, decision.json)")
        print(f"             {root}/rounds.json: {rounds}")
    if own_server:
        print(
            f"the S3 data stays in {state / 's3'}; `python -m clipdpo.s3server --dir {state / 's3'} "
            "--env-file s3.env` serves it again (its new credentials in s3.env)"
        )


@dataclass
class KfpRun:
    """What a local kfp run did: the steps it ran or took from kfp's cache, with when each ended (None with
    --verbose), and each task's round (a run of several rounds; else empty)."""

    steps: StepEnds | None
    task_rounds: dict[str, int]


def run_kfp(args, arguments: dict, state: Path, label: str) -> KfpRun:
    """The kfp pipeline through kfp's local runner, one line per step (pipelines.local_output). StepFailed when a
    step failed."""
    init_kfp(state / "kfp")
    from pipelines.clipdpo_pipeline import build_pipeline, task_rounds
    from pipelines.settings import SETTINGS

    clipdpo_pipeline = build_pipeline(SETTINGS.cluster.for_local(), args.rounds)  # kfp's local runner honours retries
    print(f"running the kfp pipeline ({label}) ...", flush=True)
    log = state / "logs" / f"{args.run_id}-{time.strftime('%Y%m%d-%H%M%S')}.log"
    with steps_only(str(log), args.verbose) as this_run:
        try:
            clipdpo_pipeline(**arguments)
        except RuntimeError as err:  # kfp: a task failed; steps_only printed that step's own error line
            if "finished with status" not in str(err) or args.verbose:
                raise
            raise StepFailed(" ".join(ANSI.sub("", str(err)).split())) from None
    return KfpRun(this_run, task_rounds(clipdpo_pipeline))


def init_kfp(pipeline_root: Path) -> None:
    """kfp's local runner with its cache, once the entries whose artifacts are gone, replaced or damaged are dropped
    (pipelines/local_cache.py): those steps run again."""
    from kfp import local

    from clipdpo.storage import Storage
    from pipelines.local_cache import prune

    entries, dropped = prune(str(pipeline_root), Storage())
    if dropped:
        print(
            f"kfp cache: {len(dropped)} of {entries} cached steps' outputs are gone, replaced or damaged (e.g. "
            f"{dropped[0]}): those steps run again",
            flush=True,
        )
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(pipeline_root), enable_caching=True)


def print_decision(run_root: str) -> str:
    """Print the promotion gate's decision table; a one-line verdict for the run's summary."""
    from clipdpo import gate
    from clipdpo.storage import Storage, join

    uri = join(run_root, "gate", "decision.json")
    if not Storage().exists(uri):
        return "no decision (the gate did not run)"
    record = json.loads(Storage().read_bytes(uri))
    print("\n" + gate.markdown(record), flush=True)
    if record["passed"] and record["pointer"]["moved"]:
        return f"PROMOTED ({record['pointer']['uri']} -> {record['candidate']['model']})"
    return "REFUSED (the promoted pointer is unchanged)"


def print_rounds(run_root: str, rounds: int) -> str:
    """For a run of several rounds: each round's verdict and the model kept (clipdpo.rounds), printed and returned
    for the run's summary; "" for one round."""
    from clipdpo.rounds import ROUNDS_RECORD, summary_line
    from clipdpo.storage import Storage, join

    uri = join(run_root, ROUNDS_RECORD)
    if rounds == 1 or not Storage().exists(uri):
        return ""
    line = summary_line(json.loads(Storage().read_bytes(uri)))
    print(f"\nrounds ({rounds} asked for): {line}", flush=True)
    return line


def copy_reports(run_root: str, target: Path) -> list[Path]:
    """The run report (report.html, its figures) and the evaluation's files next to the local state,
    readable once the loopback S3 server is gone (the evaluation's under evaluation/)."""
    from clipdpo.storage import Storage, join

    storage, copied = Storage(), []
    evaluation = stage("evaluate").artifact
    sources = [(uri, target / uri.rsplit("/", 1)[1]) for uri in storage.list(join(run_root, REPORT_DIR))]
    sources += [
        (join(run_root, evaluation, name), target / evaluation / name)
        for name in ("report.md", "report.html", "metrics.json")
    ]
    for uri, path in sources:
        if storage.exists(uri):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(storage.read_bytes(uri))
            copied.append(path)
    return copied


def local_summary(
    state: Path, run_root: str, copied: Path, earlier_runs: set[str], this_run: KfpRun | None = None
) -> str:
    """Per step: cached or run, rows, seconds; per round (several rounds): cached steps, wall time; the headline
    metrics per model; where the report is. `copied`: the folder copy_reports wrote; `earlier_runs`: kfp's local
    run folders before this run; `this_run`: what run_kfp saw (None: every step, one round)."""
    from clipdpo.report import local_summary as summary_lib
    from clipdpo.report.render import split_headline

    kfp_root = str(state / "kfp")
    steps = this_run.steps if this_run is not None else None
    tasks = summary_lib.collect(kfp_root, "clipdpo", summary_lib.task_names(kfp_root, "clipdpo"), earlier_runs, steps)
    headline = json.loads((copied / "headline.json").read_text()) if (copied / "headline.json").exists() else {}
    evaluation = copied / stage("evaluate").artifact / "metrics.json"
    models = [m["name"] for m in json.loads(evaluation.read_text())["models"]] if evaluation.exists() else []
    _, by_model = split_headline(headline, models)
    report = copied / "report.html" if (copied / "report.html").exists() else f"{run_root}/{REPORT_DIR}/report.html"
    rounds = this_run.task_rounds if this_run is not None else None
    return summary_lib.format_summary(tasks, by_model, str(report), rounds, steps)


def run_cluster(args, host: str) -> int:
    from clipdpo.cluster.kfpclient import make_client
    from pipelines.compile import compile_pipeline

    configs = checked_configs(
        read_configs(Path(args.config_dir)) if args.config_dir else {}, args.overrides, args.rounds
    )
    package = compile_pipeline(args.package, rounds=args.rounds)
    arguments = pipeline_arguments(args, configs, launcher=args.launcher)
    if not (args.run_root or args.bucket != "clipdpo-local"):
        print(
            "set --bucket or --run-root (CLIPDPO_BUCKET / CLIPDPO_RUN_ROOT) to your S3 bucket for a cluster run",
            file=sys.stderr,
        )
        return 2
    client = make_client(host, args.namespace or None)  # KFP_TOKEN / KFP_TOKEN_FILE: multi-user Kubeflow
    run = client.create_run_from_pipeline_package(
        package,
        arguments=arguments,
        run_name=f"clipdpo-{args.run_id}",
        experiment_name=args.experiment,
        enable_caching=True,
    )
    print(f"submitted run {run.run_id}: {host.rstrip('/')}/#/runs/details/{run.run_id}")
    if args.wait_hours:  # CI: wait, then `python -m clipdpo.gate` reads <run root>/gate/decision.json
        done = client.wait_for_run_completion(run.run_id, timeout=int(args.wait_hours * 3600))
        state = getattr(done, "state", "")
        print(f"run {run.run_id} ended: {state}", flush=True)
        return 0 if state == "SUCCEEDED" else 1
    return 0


def checked_configs(configs: dict[str, dict], overrides: list[str], rounds: int = 1) -> dict[str, dict]:
    """`configs` with the --set overrides applied, each parsed into its typed class (ConfigError if not), checked
    for `rounds` rounds."""
    changed = with_overrides(configs, overrides)
    validate(changed, overrides, rounds)
    return changed


def build_parser(prog: str = "python -m pipelines.run", description: str | None = __doc__) -> argparse.ArgumentParser:
    """The run's command line (experiments add their own flags to it)."""
    parser = ArgumentParser(prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_data_arguments(parser)
    _add_training_job_arguments(parser)
    _add_config_arguments(parser)
    _add_where_arguments(parser)
    return parser


def _add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """The run, where its artifacts go, its input, and how wide it runs (shards, training nodes, GPUs)."""
    parser.add_argument("--run-id", default=os.environ.get("RUN_ID", "demo"))
    parser.add_argument("--bucket", default=os.environ.get("CLIPDPO_BUCKET", "clipdpo-local"))
    parser.add_argument(
        "--run-root",
        default=os.environ.get("CLIPDPO_RUN_ROOT", ""),
        help="artifact root; default s3://<bucket>/runs/<run-id>",
    )
    parser.add_argument("--source", default=os.environ.get("CLIPDPO_SOURCE", ""))
    parser.add_argument("--shards", type=int, default=int(os.environ.get("CLIPDPO_SHARDS", "2")))
    parser.add_argument("--train-nodes", type=int, default=int(os.environ.get("CLIPDPO_TRAIN_NODES", "1")))
    parser.add_argument("--gpus-per-node", type=int, default=int(os.environ.get("CLIPDPO_GPUS_PER_NODE", "8")))


def _add_training_job_arguments(parser: argparse.ArgumentParser) -> None:
    """The training job on a cluster, and the rounds."""
    parser.add_argument(
        "--launcher",
        choices=("trainjob", "pytorchjob"),
        default=os.environ.get("CLIPDPO_TRAIN_LAUNCHER", "trainjob"),
        help="cluster runs: Kubeflow Trainer v2 TrainJob or Training Operator v1 PyTorchJob",
    )
    parser.add_argument(
        "--queue-name",
        default=os.environ.get("CLIPDPO_QUEUE_NAME", ""),
        help="cluster runs: Kueue LocalQueue for the training job",
    )
    parser.add_argument(
        "--admission-timeout-minutes",
        type=float,
        default=float(os.environ.get("CLIPDPO_ADMISSION_TIMEOUT_MINUTES", "0")),
        help="cluster runs: end the train step if Kueue has not admitted its job by then, leaving the "
        "job queued (0: wait as long as the queue takes)",
    )
    parser.add_argument(
        "--runtime",
        default=os.environ.get("CLIPDPO_TRAIN_RUNTIME", DEFAULT_RUNTIME),  # a string default goes through `type` too
        type=runtime_arg,
        help="cluster runs with --launcher trainjob: the TrainJob's runtime, <kind>/<name> or a cluster runtime's name",
    )
    parser.add_argument(
        "--rounds",
        type=positive_int,
        default=os.environ.get("CLIPDPO_ROUNDS", "1"),  # a string default goes through `type` too
        help="generate -> score -> filter -> train this many times, each round captioning with and training from "
        "the model the round before trained; a round worse than the one before (the gate's rules) ends them and "
        "the best model is kept (default 1: one round, as before)",
    )


def _add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """The stage configs and how finished outputs are checked before reuse."""
    parser.add_argument("--config-dir", default=os.environ.get("CLIPDPO_CONFIG_DIR", ""))
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="STAGE.KEY=VALUE",
        help="change one config value, e.g. --set filter.pair_min_margin=3 (repeatable); "
        "that stage reruns with the stages after it",
    )
    parser.add_argument(
        "--verify",
        choices=("cheap", "full"),
        default=None,
        help="local runs: how finished outputs are checked before reuse: cheap (sizes, S3 ETags; the "
        "default) or full (every shard's sha256)",
    )
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="local runs: show kfp's executor output (default: one line per step; the output "
        "goes to <state-dir>/logs/)",
    )


def _add_where_arguments(parser: argparse.ArgumentParser) -> None:
    """Where a local run keeps its state, where a cluster run goes, and how long it waits."""
    parser.add_argument("--state-dir", default=".local")
    parser.add_argument("--namespace", default=os.environ.get("KFP_NAMESPACE", ""))
    parser.add_argument("--experiment", default=os.environ.get("KFP_EXPERIMENT", "clipdpo"))
    parser.add_argument(
        "--wait-hours",
        type=float,
        default=float(os.environ.get("CLIPDPO_WAIT_HOURS", "0")),
        help="cluster runs: wait up to this long for the run to end (0: submit only)",
    )
    parser.add_argument("--package", default="pipelines/compiled/clipdpo.yaml")
    parser.add_argument("--debug", action="store_true", help="show the Python traceback of a user error")


def positive_int(text: str) -> int:
    """An int >= 1 (argparse type; a bad value is a usage error)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number >= 1")
    return value


def runtime_arg(text: str) -> str:
    """A TrainJob runtime as jobspec.runtime_ref reads it: a bad one is a usage error at submit, not in the job."""
    try:
        runtime_ref(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def check_overrides(parser: argparse.ArgumentParser, overrides: list[str]) -> None:
    """Each --set item is CONFIG.KEY=VALUE with CONFIG one of the run's configs (else a usage error, exit 2)."""
    for item in overrides:
        key = item.split("=", 1)[0]
        if "=" not in item or "." not in key or key.split(".", 1)[0] not in CONFIG_NAMES:
            parser.error(f"--set {item!r}: expected STAGE.KEY=VALUE with STAGE one of {list(CONFIG_NAMES)}")


@exit_2_on_user_error  # a config error, a busy state dir, an unreachable store: one line, exit 2 (--debug: traceback)
def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_overrides(parser, args.overrides)
    host = os.environ.get("KFP_HOST", "")
    if host:
        return run_cluster(args, host)
    configs = checked_configs(local_configs(args, Path(args.state_dir).resolve()), args.overrides, args.rounds)
    try:
        return run_local(args, LocalRun(configs))
    except StepFailed as err:  # one line more, no traceback: the step's own error is above
        print(f"error: {err}", file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
