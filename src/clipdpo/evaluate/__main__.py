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
    return run_cli(parser, EvaluateConfig, argv, lambda cfg, args: run(cfg, args.output))


if __name__ == "__main__":
    raise SystemExit(main())
