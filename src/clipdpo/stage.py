"""What every stage shares: its command line (flags, config, `run_cli`), shard assignment, resume and finalize.

A stage maps each input shard to one output shard of the same name. `--shard i/n` gives
this process every n-th input shard starting at i (one pod of a fan-out); finished shards
(done-record with the same fingerprint) are skipped, so a killed run resumes where it
stopped and a rerun of a finished stage does nothing, unless some shards of the finished output
no longer verify (missing, other size or checksum: clipdpo.integrity): then it redoes exactly
those. The manifest is written by a single process: the only one (`n == 1`) or a separate
`--finalize` call after the fan-out.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import pyarrow as pa

from clipdpo.artifacts import ArtifactWriter, Manifest, ShardRecord
from clipdpo.errors import ArgumentParser, UserError, print_user_error
from clipdpo.integrity import VERIFY_ENV, VERIFY_MODES
from clipdpo.storage import Storage, check_location

log = logging.getLogger("clipdpo")

T = TypeVar("T")


@dataclass(frozen=True)
class ShardSpec:
    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ValueError(f"shard {self.index}/{self.count}: need 0 <= i < n")

    @classmethod
    def parse(cls, text: str) -> "ShardSpec":
        try:
            index_text, count_text = text.split("/")
            index, count = int(index_text), int(count_text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"--shard {text!r}: expected i/n, for example 0/4") from None
        try:
            return cls(index, count)
        except ValueError:
            raise argparse.ArgumentTypeError(f"--shard {text!r}: need 0 <= i < n") from None

    def select(self, names: list[str]) -> list[str]:
        return [name for k, name in enumerate(names) if k % self.count == self.index]


def setup_logging() -> None:
    """INFO lines on stderr; warnings and errors only in quiet mode (CLIPDPO_QUIET=1 or a stage's --quiet),
    which also silences the progress lines inside a shard (clipdpo.progress)."""
    from clipdpo.progress import quiet

    logging.basicConfig(
        level=logging.WARNING if quiet() else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )


def sum_stats(records: list[ShardRecord]) -> dict[str, Any]:
    """Add up numeric stats (counters), join lists (examples, capped), keep the first of others."""
    total: dict[str, Any] = {}
    for record in records:
        for key, value in record.stats.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                total[key] = total.get(key, 0) + value
            elif isinstance(value, list):
                total[key] = (total.get(key, []) + value)[:100]  # examples, not a full list
            else:
                total.setdefault(key, value)
    return total


@dataclass
class StageResult:
    manifest: Manifest | None
    processed: list[str]
    skipped: list[str]
    seconds: float


def run_shards(
    writer: ArtifactWriter,
    unit_names: list[str],
    process: Callable[[str], tuple[pa.Table, dict[str, Any]]],
    shard: ShardSpec,
    *,
    finalize_only: bool = False,
) -> StageResult:
    """Process this worker's shards that are not done yet; finalize when this worker may."""
    started = time.monotonic()
    completion = writer.completion()
    if completion.complete:
        log.info("%s is already complete for this input and config: nothing to do", writer.uri)
        return StageResult(completion.manifest, [], unit_names, 0.0)
    kept = {shard.name: shard for shard in completion.manifest.shards} if completion.manifest else {}
    processed, skipped = [], []
    if not finalize_only:
        for name in shard.select(unit_names):
            if completion.verified(name):
                writer.keep_verified(kept[name])  # verified against the manifest: not read again
                skipped.append(name)
                continue
            if writer.done_record(name) is not None:
                skipped.append(name)
                continue
            shard_started = time.monotonic()
            table, stats = process(name)
            stats = {**stats, "seconds": round(time.monotonic() - shard_started, 3)}
            writer.write_shard(name, table, stats)
            processed.append(name)
            log.info("%s: wrote shard %s (%d rows)", writer.uri, name, table.num_rows)
        if skipped:
            log.info("%s: resumed, %d finished shard(s) kept: %s", writer.uri, len(skipped), skipped[:5])
    manifest = None
    if shard.count == 1 or finalize_only:
        manifest = writer.finalize(unit_names, sum_stats)
    return StageResult(manifest, processed, skipped, time.monotonic() - started)


def print_summary(stage: str, result: StageResult, extra: dict[str, Any] | None = None) -> None:
    summary = {
        "stage": stage,
        "processed_shards": len(result.processed),
        "skipped_shards": len(result.skipped),
        "seconds": round(result.seconds, 2),
    }
    if result.manifest is not None:
        summary["rows"] = result.manifest.rows
        summary["complete"] = True
    if extra:
        summary.update(extra)
    print(json.dumps(summary, sort_keys=True), flush=True)


def report(stage: str, result: StageResult, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Print the stage's summary line; return the artifact's stats (empty until the manifest exists)."""
    print_summary(stage, result, extra)
    return result.manifest.stats if result.manifest else {}


def add_config_flag(parser: argparse.ArgumentParser, flag: str, key: str, help: str) -> None:
    """A stage flag that is shorthand for `--set KEY=VALUE` (VALUE kept a string): `--dry-run` shows it."""

    class SetKey(argparse.Action):
        def __call__(self, parser, namespace, value, option_string=None):
            namespace.overrides = [*namespace.overrides, f"{key}={json.dumps(value)}"]

    parser.add_argument(flag, action=SetKey, metavar=key.upper(), help=help)


def build_parser(
    prog: str, doc: str | None, input_help: str | None, *, sharded: bool = True, overwrite: bool = True
) -> argparse.ArgumentParser:
    """The flags every stage shares: `--input` (when the stage has one), `--output`, `--config`, `--set`,
    `--dry-run`, and, where they apply, `--shard`/`--finalize` (a fan-out) and `--overwrite`."""
    parser = ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    if input_help:
        parser.add_argument("--input", required=True, help=input_help)
    parser.add_argument("--output", required=True, help="artifact URI to write (s3://bucket/prefix or a path)")
    parser.add_argument("--config", help="JSON config file (path or s3:// URI); defaults are the paper's")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config value, e.g. --set caption_min_score=27.5 (repeatable)",
    )
    if sharded:
        parser.add_argument(
            "--shard",
            type=ShardSpec.parse,
            default=ShardSpec(),
            metavar="I/N",
            help="process input shards I, I+N, I+2N, ... (fan-out); default 0/1",
        )
        parser.add_argument(
            "--finalize", action="store_true", help="only write the manifest once every shard is done (after a fan-out)"
        )
    if overwrite:
        parser.add_argument(
            "--overwrite",
            action="store_true",
            help="replace an existing complete artifact made with other inputs or config",
        )
    if sharded or input_help:  # the stages whose finished outputs are verified before they are reused
        parser.add_argument(
            "--verify",
            choices=VERIFY_MODES,
            default=None,
            help="how a finished output's files are checked before they are reused: cheap (sizes, "
            "and the store's checksums where it gives them; the default) or full (read every "
            f"file's sha256); also {VERIFY_ENV}",
        )
    parser.add_argument(
        "--dry-run", action="store_true", help="print the resolved config as JSON and exit; nothing is read or written"
    )
    parser.add_argument("--debug", action="store_true", help="show the Python traceback of a user error")
    parser.add_argument(
        "--quiet", action="store_true", help="log warnings and errors only: no progress lines (also CLIPDPO_QUIET=1)"
    )
    return parser


def load_config(config_cls: type[T], args: argparse.Namespace, storage: Storage | None = None) -> T | None:
    """The stage config from defaults, then `--config` (a path or an s3:// URI, read through Storage),
    then `--set`; None after printing it when `--dry-run` is given."""
    from clipdpo import config as config_lib

    storage = storage or Storage()
    cfg = config_lib.load(config_cls, args.config, list(args.overrides), storage.read_bytes)
    if args.dry_run:
        print(json.dumps(config_lib.to_dict(cfg), indent=2))
        return None
    return cfg


def run_cli(
    parser: argparse.ArgumentParser,
    config_cls: type[T],
    argv: list[str] | None,
    call: Callable[[T, argparse.Namespace], Any],
) -> int:
    """Every stage's command line, one seam: flags -> config -> `call(cfg, args)` (the stage's `run`); exit code.

    A `UserError` (bad flag value, missing file, wrong credentials, ...) is one line on stderr and
    exit code 2; `--debug` re-raises it with its traceback. Other exceptions are bugs and keep theirs.
    """
    args = parser.parse_args(argv)
    if args.quiet:
        os.environ["CLIPDPO_QUIET"] = "1"  # the stage's progress lines read it too
    verify_before = os.environ.get(VERIFY_ENV)
    if getattr(args, "verify", None):
        os.environ[VERIFY_ENV] = args.verify  # read where outputs are verified (clipdpo.integrity)
    setup_logging()
    try:
        for flag in ("input", "output"):
            if getattr(args, flag, None) is not None:
                check_location(getattr(args, flag), f"--{flag}")
        if (cfg := load_config(config_cls, args)) is not None:
            call(cfg, args)
    except UserError as err:
        if args.debug:
            raise
        print_user_error(err)
        return 2
    finally:
        if verify_before is None:
            os.environ.pop(VERIFY_ENV, None)  # a stage called in-process leaves its caller's setting as it was
        else:
            os.environ[VERIFY_ENV] = verify_before
    return 0


def sharded_main(
    run: Callable[..., Any], config_cls: type, argv: list[str] | None, *, prog: str, doc: str | None, input_help: str
) -> int:
    """The command line of a stage with an input artifact: flags -> config -> `run`."""
    return run_cli(
        build_parser(prog, doc, input_help),
        config_cls,
        argv,
        lambda cfg, args: run(
            cfg, args.input, args.output, shard=args.shard, finalize=args.finalize, overwrite=args.overwrite
        ),
    )
