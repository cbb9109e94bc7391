"""python -m clipdpo.evaluate --output URI [--config F] [--set key=value ...]

The paper's evaluations (Sec. 6) for a baseline and the models to compare with it: AMBER
(Table 2), zero-shot classification through captions (Table 3), the LLaVA benchmark suite
(Table 4). Writes responses (resumable), metrics.json, report.md and report.html under --output.
Example: --set 'models=[{"name":"base","path":"llava-hf/llava-1.5-7b-hf"},{"name":"clip-dpo","path":"s3://b/run/model/model"}]'
"""

from __future__ import annotations

import argparse
import json

from clipdpo.evaluate.config import EvaluateConfig
from clipdpo.stage import entry_point, load_config
from clipdpo.storage import Storage


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m clipdpo.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", required=True, help="where responses, metrics.json and the report go")
    parser.add_argument("--config", help="JSON config file (path or s3:// URI)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config value, e.g. --set amber.evaluation_type=d (repeatable)")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved config, then exit")
    return parser


def run(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    storage = Storage()
    cfg = load_config(EvaluateConfig, args, storage)
    if cfg is None:
        return {}
    from clipdpo.evaluate.runner import run as evaluate  # torch loads only past argument checks

    metrics = evaluate(cfg, args.output, storage)
    amber_scores = {name: result["amber"].get("amber_score") for name, result in metrics["results"].items()
                    if "amber" in result}
    print(json.dumps({"stage": "evaluate", "output": args.output, "complete": metrics["complete"],
                      "report": args.output.rstrip("/") + "/report.md", "amber_score": amber_scores},
                     sort_keys=True), flush=True)
    return metrics


main = entry_point(run)


if __name__ == "__main__":
    raise SystemExit(main())
