"""`python -m clipdpo_lab run`: the kfp pipeline on the synthetic world, locally, through the product's run.

The world of `--world SEED` is built once (cached under --world-cache) and gives the stage configs: its
images, its CLIP and LLaVA, its benchmark; the report compares `base` with the trained model. The paper's QA
path is on (QA rows from the world's QA writer, QA pairs through score and filter); `--no-qa` leaves it out. `--method
povid|both` trains POVID (or CLIP-DPO + POVID) in the pipeline instead, its model named by the method.
`--arms clipdpo,povid,both,povid_text,control` trains the listed arms other than the pipeline's own in
this process after the pipeline and evaluates every model into the same report; `--control shuffled` adds
the shuffled-score control arm alone (clipdpo_lab.arms). The run's `--set` items reach the arms too: train,
povid, filter and evaluate values go into their configs (train.* on top of each arm's method settings).
`--rounds N` runs generate -> train N times, each round from the model the round before trained (clipdpo.rounds;
one round when arms are asked for).
Every other flag is the product's (`python -m pipelines.run --help`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from clipdpo.errors import exit_2_on_user_error
from clipdpo_lab.arms import ARMS, CONTROLS, METHODS, TRAIN_OVERRIDES, headline, run_arms, world_configs
from clipdpo_world.judges import JUDGES
from pipelines import run as product


def parse_arms(text: str) -> list[str]:
    arms = [arm.strip() for arm in text.split(",") if arm.strip()]
    unknown = [arm for arm in arms if arm not in ARMS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown arm(s) {unknown}; arms: {', '.join(ARMS)}")
    return list(dict.fromkeys(arms))


def build_parser() -> argparse.ArgumentParser:
    parser = product.build_parser(prog="python -m clipdpo_lab run", description=__doc__)
    parser.set_defaults(run_id=os.environ.get("RUN_ID", ""))
    parser.add_argument(
        "--world",
        type=int,
        default=int(os.environ.get("CLIPDPO_WORLD") or 0),
        help="the synthetic world's seed (default 0)",
    )
    parser.add_argument(
        "--world-cache",
        default=os.environ.get("CLIPDPO_WORLD_CACHE", ""),
        help="where worlds are built and cached (default <state-dir>/world)",
    )
    parser.add_argument(
        "--control",
        choices=CONTROLS,
        default=os.environ.get("CLIPDPO_CONTROL") or None,
        help="also train and evaluate this control arm (shuffled: CLIP scores shuffled within each image)",
    )
    parser.add_argument(
        "--method",
        choices=METHODS,
        default=os.environ.get("CLIPDPO_METHOD") or "clipdpo",
        help="what the pipeline's train consumes: clipdpo (CLIP-ranked pairs), povid (ground "
        "truth vs injected hallucinations, noisy-image rejections in training) or both",
    )
    parser.add_argument(
        "--arms",
        type=parse_arms,
        default=parse_arms(os.environ.get("CLIPDPO_ARMS", "")),
        help="arms trained in-process after the pipeline and evaluated into the same report, "
        f"comma-separated from {','.join(ARMS)} (control: the shuffled-score CLIP-DPO "
        "control; povid_text: POVID with beta_2 = 0, no noisy-image term)",
    )
    parser.add_argument(
        "--qa",
        action=argparse.BooleanOptionalAction,
        default=os.environ.get("CLIPDPO_WORLD_QA", "1") != "0",
        help="generate also writes QA rows (questions with a right and a wrong answer, the paper's QA pairs) "
        "with the world's QA writer, trained once per world beside its first build (default; --no-qa for "
        "the ablation without them)",
    )
    parser.add_argument(
        "--judge",
        choices=JUDGES,
        default=os.environ.get("CLIPDPO_JUDGE") or "clip",
        help="the score stage's judge: the world CLIP (default, the paper's) or the world SigLIP (trained into the "
        "world's folder on first use, a few minutes), whole captions or noun-level (-nouns: a caption's score mixed "
        "half and half with its least supported object phrase's)",
    )
    return parser


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    product.check_overrides(parser, args.overrides)
    if any(item.split("=", 1)[0] == "train.method" for item in args.overrides):
        parser.error(
            "--set train.method: on the world the pipeline's method is --method's, and each arm trains its own (--arms)"
        )
    if args.rounds > 1 and extra_arms(args):
        # the arms are trained and evaluated beside round 1's model; with several rounds the report's model is the
        # kept round's, which they would not be compared with
        parser.error("--arms / --control: with one round only (--rounds 1)")
    if os.environ.get("KFP_HOST"):
        parser.error("the world runs locally only: unset KFP_HOST, or submit with `python -m pipelines.run`")
    args.run_id = args.run_id or f"world{args.world}"
    return args


def extra_arms(args) -> tuple[str, ...]:
    """The arms run after the pipeline: --arms less the pipeline's own method, plus the control of --control."""
    arms = [arm for arm in args.arms if arm != args.method]
    if args.control and "control" not in arms:
        arms.append("control")
    return tuple(arms)


def local_run(args) -> tuple[product.LocalRun, dict]:
    """The product's LocalRun for the world of `args` (configs validated, --set applied), and the lab's own
    configs (every stage's plus the arms' train base and train overrides)."""
    state = Path(args.state_dir).resolve()
    run_root = args.run_root or f"s3://{args.bucket}/runs/{args.run_id}"
    lab, world = world_configs(
        args.world,
        str(Path(args.world_cache or state / "world").resolve()),
        run_root,
        method=args.method,
        qa=args.qa,
        judge=args.judge,
    )
    stages = product.checked_configs(
        {name: lab[name] for name in product.CONFIG_NAMES if name in lab}, args.overrides, args.rounds
    )
    lab = {**lab, **stages, TRAIN_OVERRIDES: [item for item in args.overrides if item.startswith("train.")]}
    arms = extra_arms(args)

    def after_pipeline(root: str) -> None:
        if not arms:
            return
        started = time.monotonic()
        run_arms(lab, world.lvlm, root, arms, method=args.method)
        from clipdpo.report.build import write

        write(root)  # the run report again, now with every arm
        print(
            f"arms {', '.join(arms)} (trained and evaluated in-process) finished in {time.monotonic() - started:.1f}s",
            flush=True,
        )

    def after_summary(reports: Path) -> None:
        metrics = json.loads((reports / "evaluation" / "metrics.json").read_text())
        decoding = (metrics["resources"].get("amber_decoding") or {}).get("description", "greedy")
        cpu = (metrics["resources"].get("cpu") or {}).get("cpu_model", "unknown CPU")
        print(
            f"world {args.world}, AMBER on its held-out images; descriptions {decoding}; measured on {cpu}:\n"
            + headline(metrics)
        )

    return product.LocalRun(
        stages, label=f"world {args.world}", after_pipeline=after_pipeline, after_summary=after_summary
    ), lab


def pin_cpu() -> None:
    """The CPU code paths of this run and every component it starts (clipdpo.determinism): one thread, AVX2
    kernels, so another x86-64 machine of the kind gives the same numbers. Before torch loads, or it is said."""
    from clipdpo import determinism

    pins = determinism.CpuPins(threads=int(os.environ.get("OMP_NUM_THREADS") or 1))
    for problem in determinism.export_for_children(pins):
        print(f"warning: {problem}", file=sys.stderr)


@exit_2_on_user_error
def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    pin_cpu()
    run, _ = local_run(args)
    try:
        return product.run_local(args, run)
    except product.StepFailed as err:  # one line more, no traceback: the step's own error is above
        print(f"error: {err}", file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
