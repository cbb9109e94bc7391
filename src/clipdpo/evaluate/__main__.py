"""python -m clipdpo.evaluate --output URI [--config F] [--set key=value ...]

The paper's evaluations (Sec. 6) for a baseline and the models to compare with it: AMBER
(Table 2), zero-shot classification through captions (Table 3), the LLaVA benchmark suite
(Table 4). Writes responses (resumable), metrics.json, report.md and report.html under --output.
Example: --set 'models=[{"name":"base","path":"llava-hf/llava-1.5-7b-hf"},{"name":"clip-dpo","path":"s3://b/run/model/model"}]'
"""

from __future__ import annotations

from clipdpo.evaluate import run
from clipdpo.evaluate.config import EvaluateConfig
from clipdpo.stage import build_parser, run_cli


def main(argv: list[str] | None = None) -> int:
    parser = build_parser("python -m clipdpo.evaluate", __doc__, None, sharded=False, overwrite=False)
    parser.add_argument("--only-model", default="", help="the fan-out: evaluate only this model (with --only-task)")
    parser.add_argument("--only-task", default="", help="amber | zeroshot-<dataset> | suite-<benchmark>")
    parser.add_argument("--merge-tasks", action="store_true", help="the report from the fan-out's task records")
    args_seen = parser.parse_known_args(argv)[0]
    if bool(args_seen.only_model) != bool(args_seen.only_task):
        parser.error("--only-model and --only-task: give both (one (model, task) of the fan-out) or neither")

    def call(cfg, args):
        task = (args.only_model, args.only_task) if args.only_task else None
        return run(cfg, args.output, task=task, merge=args.merge_tasks)

    return run_cli(parser, EvaluateConfig, argv, call)


if __name__ == "__main__":
    raise SystemExit(main())
