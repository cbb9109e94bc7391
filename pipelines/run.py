"""python -m pipelines.run: run the clipdpo pipeline on a cluster (KFP_HOST set) or on this machine.

Cluster: compiles the pipeline for the configured images and submits it to the Kubeflow Pipelines
endpoint in KFP_HOST; prints the run URL. Stage configs come from --config-dir (<stage>.json).

Local (no KFP_HOST): the same pipeline definition runs through kfp's local SubprocessRunner, each
component as a subprocess in this environment; artifacts go to a loopback S3 server (SeaweedFS,
started here unless AWS_ENDPOINT_URL is set); with no --config-dir the built-in default (tiny
models built from configs, the 10 built-in images) is used and training runs in-process.
With --world SEED the local run uses the synthetic world of that seed instead (built once, cached
under --world-cache): its images, its CLIP and LLaVA, its benchmark; the report compares `base` with
`clipdpo`. --qa adds the paper's QA path (QA rows from the world's QA writer, QA pairs through score and
filter). --method povid|both trains POVID (or CLIP-DPO + POVID) in the pipeline instead, its model named
by the method. --arms clipdpo,povid,both,control trains the listed arms other than the pipeline's own in
this process after the pipeline and evaluates every model into the same report (base + the five arms
with `--arms clipdpo,povid,both,control`); --control shuffled adds the shuffled-score control arm alone.
See pipelines/world_run.py.
`--set STAGE.KEY=VALUE` changes one stage config value: locally that stage reruns with every stage after it,
and only those (each step's output carries the version of what it wrote: clipdpo.outputref). The arms of
--arms/--control honour every override: train, povid, filter (the control arm filters again) and evaluate
values go into their own configs (train.* on top of each arm's method settings), and ingest, generate and
score reach them through the pipeline's artifacts they reuse; train.method is --method's on the world.
Locally, kfp's cache entries whose artifacts are gone or replaced are dropped first (pipelines/local_cache.py),
and the terminal shows one line per step; kfp's executor output goes to <state-dir>/logs/ (--verbose: shown).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from clipdpo.report import REPORT_DIR
from clipdpo.stages import NAMES, STAGES, stage
from pipelines.local_output import steps_only
from pipelines.world_run import CONTROLS, METHODS, TRAIN_OVERRIDES


def pipeline_arguments(args, configs: dict[str, dict], launcher: str) -> dict:
    arguments = {
        "run_root": args.run_root or f"s3://{args.bucket}/runs/{args.run_id}",
        "source": args.source or configs.get("ingest", {}).get("source", "builtin:demo"),
        "shard_count": args.shards,
        "train_launcher": launcher,
        "train_nodes": args.train_nodes,
        "train_gpus_per_node": args.gpus_per_node,
    }
    if launcher != "local":  # cluster runs: Kueue queue (empty: none)
        arguments.update(train_queue_name=args.queue_name, train_runtime=args.runtime)
    for name in (*NAMES, "gate", "povid"):
        arguments[f"{name}_config"] = json.dumps(configs.get(name, {}), sort_keys=True)
    return arguments


def with_overrides(configs: dict[str, dict], overrides: list[str]) -> dict[str, dict]:
    """`configs` with each `stage.key=value` of --set applied (values parse as JSON). The world's configs (those
    with `world_train`) also keep the `train.` items: the arms trained after the pipeline build their train
    configs from `world_train` and apply them on top (pipelines/world_run.py arm_train_config)."""
    from clipdpo.config import apply_overrides

    if not overrides:
        return configs
    changed = apply_overrides(configs, overrides)
    if "world_train" in configs:
        changed[TRAIN_OVERRIDES] = [item for item in overrides if item.startswith("train.")]
    return changed


def read_configs(config_dir: Path) -> dict[str, dict]:
    """Stage configs from `<config_dir>/<stage>.json`; a missing file means the stage's defaults."""
    configs = {}
    # gate.json: the promotion gate's rules (clipdpo.gate.GateConfig); povid.json: POVID's pairs source
    # (clipdpo.generate.povid_source.PovidSourceConfig), used when train.json's method is povid or both
    for name in (*NAMES, "gate", "povid"):
        path = config_dir / f"{name}.json"
        configs[name] = json.loads(path.read_text()) if path.exists() else {}
    return configs


def local_configs(args, state: Path) -> tuple[dict[str, dict], object]:
    """The stage configs of a local run: --config-dir, the world of --world, or the built-in demo; and the
    world's paths (None without --world)."""
    if args.world is not None:
        from pipelines.world_run import world_configs

        return world_configs(args.world, str(Path(args.world_cache or state / "world").resolve()),
                             args.run_root or f"s3://{args.bucket}/runs/{args.run_id}", method=args.method,
                             qa=args.qa)
    if args.config_dir:
        return read_configs(Path(args.config_dir)), None
    from clipdpo.demo.configs import write_demo_configs

    return write_demo_configs(state / "configs", state / "models"), None


def extra_arms(args) -> tuple[str, ...]:
    """The arms run after the pipeline: --arms less the pipeline's own method, plus the control of --control."""
    arms = [arm for arm in args.arms if arm != args.method]
    if args.control and "control" not in arms:
        arms.append("control")
    return tuple(arms)


def parse_arms(text: str) -> list[str]:
    from pipelines.world_run import ARMS

    arms = [arm.strip() for arm in text.split(",") if arm.strip()]
    unknown = [arm for arm in arms if arm not in ARMS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown arm(s) {unknown}; arms: {', '.join(ARMS)}")
    return list(dict.fromkeys(arms))


def run_extra_arms(args, configs: dict[str, dict], world, run_root: str) -> None:
    """The arms after the pipeline (pipelines/world_run.py), all evaluated into the run's report."""
    arms = extra_arms(args)
    if not arms:
        return
    from pipelines.world_run import run_arms

    started = time.monotonic()
    run_arms(configs, world.lvlm, run_root, arms, method=args.method)
    from clipdpo.report.build import write

    write(run_root)  # the run report again, now with every arm
    print(f"arms {', '.join(arms)} (trained and evaluated in-process) finished in {time.monotonic() - started:.1f}s",
          flush=True)


def run_local(args) -> int:
    from clipdpo import s3server

    state = Path(args.state_dir).resolve()
    configs, world = local_configs(args, state)
    configs = with_overrides(configs, args.overrides)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    server = None
    if not os.environ.get("AWS_ENDPOINT_URL"):
        server = s3server.start(str(state / "s3"))
        os.environ.update(server.env)  # the components (subprocesses) inherit it
        print(f"started loopback S3 server at {server.endpoint_url} (data in {state / 's3'})", flush=True)
    arguments = pipeline_arguments(args, configs, launcher="local")
    from clipdpo.report.local_summary import run_dirs

    earlier_runs = set(run_dirs(str(state / "kfp"), "clipdpo"))  # the summary tells this run's steps apart
    started = time.monotonic()
    try:
        init_kfp(state / "kfp")
        from pipelines.clipdpo_pipeline import clipdpo_pipeline

        print(f"running the kfp pipeline ({'world ' + str(args.world) if world else 'demo'}) ...", flush=True)
        with steps_only(str(state / "logs" / f"{args.run_id}-{time.strftime('%Y%m%d-%H%M%S')}.log"),
                        args.verbose) as this_run:
            clipdpo_pipeline(**arguments)
        print(f"kfp pipeline finished in {time.monotonic() - started:.1f}s", flush=True)
        run_extra_arms(args, configs, world, arguments["run_root"])
        reports = copy_reports(arguments["run_root"], state / "reports" / args.run_id)
        summary = local_summary(state, arguments["run_root"], state / "reports" / args.run_id, earlier_runs,
                                this_run)
        decision = print_decision(arguments["run_root"])
    finally:
        if server is not None:
            server.stop()
    root = arguments["run_root"]
    print(f"\nrun finished in {time.monotonic() - started:.1f}s (kfp local runner); artifacts under {root}/:")
    for each in STAGES:
        print(f"  {each.artifact:<10} {root}/{each.artifact}")
    print(f"  report     {root}/{REPORT_DIR}/report.html (figures, examples; report.md, headline.json, PNGs)")
    print(f"             {root}/{stage('evaluate').artifact}/report.md (the evaluation's tables; report.html, "
          "metrics.json)")
    if reports:
        print(f"  copied to  {state / 'reports' / args.run_id}/ ({len(reports)} files)")
    print(f"  kfp        {state / 'kfp'}/ (per task: its Metrics; the report step's HTML and Markdown)")
    print(f"  TRL data   {root}/{stage('filter').artifact}/export/trl/*.parquet")
    print(f"  gate       {root}/gate/decision.json: {decision}")
    if server is not None:
        print(f"the S3 data stays in {state / 's3'}; `python -m clipdpo.s3server --dir {state / 's3'}` serves it again")
    if world is not None and reports:
        from pipelines.world_run import headline

        metrics = json.loads((state / "reports" / args.run_id / "evaluation" / "metrics.json").read_text())
        decoding = (metrics["resources"].get("amber_decoding") or {}).get("description", "greedy")
        print(f"world {args.world}, AMBER on its held-out images; descriptions {decoding}:\n" + headline(metrics))
    print("\n" + summary)
    return 0


def init_kfp(pipeline_root: Path) -> None:
    """kfp's local runner with its cache, once the entries whose artifacts are gone or replaced are dropped
    (pipelines/local_cache.py): those steps run again."""
    from kfp import local

    from clipdpo.storage import Storage
    from pipelines.local_cache import prune

    entries, dropped = prune(str(pipeline_root), Storage())
    if dropped:
        print(f"kfp cache: {len(dropped)} of {entries} cached steps' outputs are gone or replaced (e.g. "
              f"{dropped[0]}): those steps run again", flush=True)
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


def copy_reports(run_root: str, target: Path) -> list[Path]:
    """The run report (report.html, its figures) and the evaluation's files next to the local state,
    readable once the loopback S3 server is gone (the evaluation's under evaluation/)."""
    from clipdpo.storage import Storage, join

    storage, copied = Storage(), []
    evaluation = stage("evaluate").artifact
    sources = [(uri, target / uri.rsplit("/", 1)[1]) for uri in storage.list(join(run_root, REPORT_DIR))]
    sources += [(join(run_root, evaluation, name), target / evaluation / name)
                for name in ("report.md", "report.html", "metrics.json")]
    for uri, path in sources:
        if storage.exists(uri):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(storage.read_bytes(uri))
            copied.append(path)
    return copied


def local_summary(state: Path, run_root: str, copied: Path, earlier_runs: set[str],
                  this_run: set[str] | None = None) -> str:
    """Per step: cached or run, rows, seconds; the headline metrics per model; where the report is.
    `copied`: the folder copy_reports wrote; `earlier_runs`: kfp's local run folders before this run;
    `this_run`: the steps it ran or served from cache (pipelines.local_output.steps_only; None: all)."""
    from clipdpo.report import local_summary as summary_lib
    from clipdpo.report.render import split_headline

    kfp_root = str(state / "kfp")
    tasks = summary_lib.collect(kfp_root, "clipdpo", summary_lib.task_names(kfp_root, "clipdpo"), earlier_runs,
                                this_run)
    headline = json.loads((copied / "headline.json").read_text()) if (copied / "headline.json").exists() else {}
    evaluation = copied / stage("evaluate").artifact / "metrics.json"
    models = [m["name"] for m in json.loads(evaluation.read_text())["models"]] if evaluation.exists() else []
    _, by_model = split_headline(headline, models)
    report = copied / "report.html" if (copied / "report.html").exists() else f"{run_root}/{REPORT_DIR}/report.html"
    return summary_lib.format_summary(tasks, by_model, str(report))


def run_cluster(args, host: str) -> int:
    import kfp

    from pipelines.compile import compile_pipeline

    configs = with_overrides(read_configs(Path(args.config_dir)) if args.config_dir else {}, args.overrides)
    package = compile_pipeline(args.package)
    arguments = pipeline_arguments(args, configs, launcher=args.launcher)
    if not (args.run_root or args.bucket != "clipdpo-local"):
        print("set --bucket or --run-root (CLIPDPO_BUCKET / CLIPDPO_RUN_ROOT) to your S3 bucket for a cluster run",
              file=sys.stderr)
        return 2
    client = kfp.Client(host=host, namespace=args.namespace or None)
    run = client.create_run_from_pipeline_package(package, arguments=arguments, run_name=f"clipdpo-{args.run_id}",
                                                  experiment_name=args.experiment, enable_caching=True)
    print(f"submitted run {run.run_id}: {host.rstrip('/')}/#/runs/details/{run.run_id}")
    if args.wait_hours:  # CI: wait, then `python -m clipdpo.gate` reads <run root>/gate/decision.json
        done = client.wait_for_run_completion(run.run_id, timeout=int(args.wait_hours * 3600))
        state = getattr(done, "state", "")
        print(f"run {run.run_id} ended: {state}", flush=True)
        return 0 if state == "SUCCEEDED" else 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-id", default=os.environ.get("RUN_ID", "demo"))
    parser.add_argument("--bucket", default=os.environ.get("CLIPDPO_BUCKET", "clipdpo-local"))
    parser.add_argument("--run-root", default=os.environ.get("CLIPDPO_RUN_ROOT", ""),
                        help="artifact root; default s3://<bucket>/runs/<run-id>")
    parser.add_argument("--source", default=os.environ.get("CLIPDPO_SOURCE", ""))
    parser.add_argument("--shards", type=int, default=int(os.environ.get("CLIPDPO_SHARDS", "2")))
    parser.add_argument("--train-nodes", type=int, default=int(os.environ.get("CLIPDPO_TRAIN_NODES", "1")))
    parser.add_argument("--gpus-per-node", type=int, default=int(os.environ.get("CLIPDPO_GPUS_PER_NODE", "8")))
    parser.add_argument("--launcher", choices=("trainjob", "pytorchjob"),
                        default=os.environ.get("CLIPDPO_TRAIN_LAUNCHER", "pytorchjob"),
                        help="cluster runs: Kubeflow Trainer v2 TrainJob or Training Operator v1 PyTorchJob")
    parser.add_argument("--queue-name", default=os.environ.get("CLIPDPO_QUEUE_NAME", ""),
                        help="cluster runs: Kueue LocalQueue for the training job")
    parser.add_argument("--runtime", default=os.environ.get("CLIPDPO_TRAIN_RUNTIME", "torch-distributed"),
                        help="cluster runs with --launcher trainjob: the ClusterTrainingRuntime")
    parser.add_argument("--config-dir", default=os.environ.get("CLIPDPO_CONFIG_DIR", ""))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="STAGE.KEY=VALUE",
                        help="change one stage config value, e.g. --set filter.pair_min_margin=3 (repeatable); "
                             "that stage reruns with the stages after it; with --world the arms after the pipeline "
                             "(--arms, --control) take the same values (train.*: on top of each arm's method)")
    parser.add_argument("--verbose", action="store_true",
                        help="local runs: show kfp's executor output (default: one line per step; the output "
                             "goes to <state-dir>/logs/)")
    parser.add_argument("--state-dir", default=".local")
    parser.add_argument("--world", type=int, default=int(os.environ["CLIPDPO_WORLD"]) if os.environ.get("CLIPDPO_WORLD")
                        else None, help="local runs: the synthetic world of this seed instead of the demo")
    parser.add_argument("--world-cache", default=os.environ.get("CLIPDPO_WORLD_CACHE", ""),
                        help="where worlds are built and cached (default <state-dir>/world)")
    parser.add_argument("--control", choices=CONTROLS, default=os.environ.get("CLIPDPO_CONTROL") or None,
                        help="with --world: also train and evaluate this control arm (shuffled: CLIP scores "
                             "shuffled within each image)")
    parser.add_argument("--method", choices=METHODS, default=os.environ.get("CLIPDPO_METHOD") or "clipdpo",
                        help="with --world: what the pipeline's train consumes: clipdpo (CLIP-ranked pairs), povid "
                             "(ground truth vs injected hallucinations, noisy-image rejections in training) or both")
    parser.add_argument("--arms", type=parse_arms, default=parse_arms(os.environ.get("CLIPDPO_ARMS", "")),
                        help="with --world: arms trained in-process after the pipeline and evaluated into the same "
                             "report, comma-separated from clipdpo,povid,both,povid_text,control (control: the shuffled-score "
                             "CLIP-DPO control; povid_text: POVID with beta_2 = 0, no noisy-image term); e.g. "
                             "clipdpo,povid,both,control for all five models with base")
    parser.add_argument("--qa", action="store_true", default=os.environ.get("CLIPDPO_WORLD_QA") == "1",
                        help="with --world: generate also writes QA rows (questions with a right and a wrong answer, "
                             "the paper's QA pairs) with the world's QA writer, trained once per world (~12 min)")
    parser.add_argument("--namespace", default=os.environ.get("KFP_NAMESPACE", ""))
    parser.add_argument("--experiment", default=os.environ.get("KFP_EXPERIMENT", "clipdpo"))
    parser.add_argument("--wait-hours", type=float, default=float(os.environ.get("CLIPDPO_WAIT_HOURS", "0")),
                        help="cluster runs: wait up to this long for the run to end (0: submit only)")
    parser.add_argument("--package", default="pipelines/compiled/clipdpo.yaml")
    args = parser.parse_args(argv)
    stages = (*NAMES, "gate", "povid")
    for item in args.overrides:
        if "=" not in item or item.split("=", 1)[0].split(".", 1)[0] not in stages or "." not in item.split("=", 1)[0]:
            parser.error(f"--set {item!r}: expected STAGE.KEY=VALUE with STAGE one of {list(stages)}")
    if args.world is not None and any(item.split("=", 1)[0] == "train.method" for item in args.overrides):
        parser.error("--set train.method: on the world the pipeline's method is --method's, and each arm trains "
                     "its own (--arms)")
    if args.control and args.world is None:
        parser.error("--control needs --world (the control arm is defined on the synthetic world)")
    if args.qa and args.world is None:
        parser.error("--qa needs --world (the QA writer is the world's; a cluster run sets qa in generate.json)")
    if (args.arms or args.method != "clipdpo") and args.world is None:
        parser.error("--method and --arms need --world locally (a cluster run sets method in train.json and the "
                     "POVID source in povid.json under --config-dir)")
    host = os.environ.get("KFP_HOST", "")
    return run_cluster(args, host) if host else run_local(args)


if __name__ == "__main__":
    raise SystemExit(main())
