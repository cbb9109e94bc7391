"""Run the pipeline on this machine: the same stage entry points, artifacts through loopback S3.

    python -m clipdpo.localrun [--run-id demo] [--source builtin:demo] [--config-dir DIR]

With no S3 configured (no AWS_ENDPOINT_URL), a SeaweedFS server is started on 127.0.0.1 with
its data under .local/s3 and stopped at the end. With no config dir, the built-in default is
used: tiny random models built from configs under .local/models (no downloads) and filter
thresholds relaxed to suit their scores. Each stage runs as `python -m clipdpo.<stage>`, as
a pod would; a rerun finds every artifact complete and does nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from clipdpo import s3server, tiny
from clipdpo.storage import join

STAGES = ("ingest", "generate", "score", "filter")

# Random tiny CLIP scores sit near 0: the paper's thresholds (28/25) would drop everything.
DEMO_FILTER = {
    "caption_min_score": -100.0,
    "question_min_score": -100.0,
    "qa_caption_min_score": -100.0,
    "pair_min_margin": 0.5,
    "pair_min_length_ratio": 0.5,
}


def write_demo_configs(config_dir: Path, models_dir: Path) -> None:
    paths = tiny.build_all(str(models_dir))
    config_dir.mkdir(parents=True, exist_ok=True)
    configs = {
        "ingest": {"source": "builtin:demo", "source_name": "skimage", "shard_size": 4},
        "generate": {
            "captioners": [{"name": "tiny-llava", "path": paths["captioner"], "engine": "hf"}],
            "sampling": {"max_new_tokens": 24},
            "qa": {"model": {"name": "tiny-llm", "path": paths["llm"], "engine": "hf"},
                   "sampling": {"max_new_tokens": 48}},
        },
        "score": {"model_name": tiny.TINY_CLIP_NAME, "pretrained": None,
                  "model_config_dir": paths["clip_config_dir"]},
        "filter": DEMO_FILTER,
    }
    for stage, body in configs.items():
        (config_dir / f"{stage}.json").write_text(json.dumps(body, indent=2))


def stage_commands(base_uri: str, config_dir: Path, source: str | None) -> list[tuple[str, list[str]]]:
    uris = {stage: join(base_uri, name) for stage, name in
            zip(STAGES, ("images", "candidates", "scores", "pairs"))}
    inputs = {"generate": uris["ingest"], "score": uris["generate"], "filter": uris["score"]}
    commands = []
    for stage in STAGES:
        args = [sys.executable, "-m", f"clipdpo.{stage}", "--output", uris[stage],
                "--config", str(config_dir / f"{stage}.json")]
        if stage in inputs:
            args += ["--input", inputs[stage]]
        if stage == "ingest" and source:
            args += ["--source", source]
        commands.append((stage, args))
    return commands


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m clipdpo.localrun", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-id", default="demo", help="artifacts go to s3://<bucket>/runs/<run-id>/")
    parser.add_argument("--bucket", default="clipdpo-local")
    parser.add_argument("--source", help="images: folder, s3:// prefix, or builtin:demo (default from config)")
    parser.add_argument("--config-dir", help="folder with ingest/generate/score/filter .json configs")
    parser.add_argument("--state-dir", default=".local", help="S3 data, tiny models and demo configs")
    args = parser.parse_args(argv)

    state = Path(args.state_dir).resolve()
    config_dir = Path(args.config_dir) if args.config_dir else state / "configs"
    if not args.config_dir:
        write_demo_configs(config_dir, state / "models")
    server = None
    env = dict(os.environ, HF_HUB_OFFLINE=os.environ.get("HF_HUB_OFFLINE", "1"))
    if not env.get("AWS_ENDPOINT_URL"):
        server = s3server.start(str(state / "s3"))
        env.update(server.env)
        print(f"started loopback S3 server at {server.endpoint_url} (data in {state / 's3'})", flush=True)
    base_uri = f"s3://{args.bucket}/runs/{args.run_id}"
    started = time.monotonic()
    try:
        for stage, command in stage_commands(base_uri, config_dir, args.source):
            print(f"\n=== {stage}: {' '.join(command[1:])}", flush=True)
            completed = subprocess.run(command, env=env)
            if completed.returncode != 0:
                print(f"stage {stage} failed with exit code {completed.returncode}", file=sys.stderr)
                return completed.returncode
    finally:
        if server is not None:
            server.stop()
    print(f"\nrun {args.run_id!r} finished in {time.monotonic() - started:.1f}s; artifacts under {base_uri}/:")
    for name in ("images", "candidates", "scores", "pairs"):
        print(f"  {name:<10} {join(base_uri, name)}   (manifest.json, data/, _done/)")
    print(f"  TRL JSONL  {join(base_uri, 'pairs', 'export', 'trl')}/")
    if server is not None:
        print(f"the S3 data stays in {state / 's3'}; `python -m clipdpo.s3server --dir {state / 's3'}` serves it again")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
