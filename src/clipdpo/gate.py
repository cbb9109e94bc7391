"""The promotion gate: does a newly trained model beat the promoted one? Pure rules, then one pointer move.

A rule names a metric of a model's evaluation results by a dotted path (`*` matches every key at
that level, e.g. every suite benchmark), which way is better, and whether the candidate must
improve on the reference or only hold it within a tolerance. `decide` applies every rule to two
result dicts (as in metrics.json `results[<model>]`) and returns each check, side by side.

The `promoted` pointer is one S3 object (JSON: the model URI, the run and its metrics). It moves
only with a conditional put: If-None-Match: * when there is none yet, If-Match on the ETag read
before deciding otherwise, so two runs deciding at once cannot both win.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from clipdpo.config import NON_NEGATIVE, check_ranges
from clipdpo.errors import ArgumentParser, UserError, exit_2_on_user_error
from clipdpo.storage import NotFound, PreconditionFailed, Storage, join


@dataclass(frozen=True)
class Rule:
    metric: str  # dotted path in a model's results; `*` matches every key at that level
    better: str = "higher"  # higher | lower
    require: str = "improve"  # improve: strictly better; hold: not worse by more than `tolerance`
    tolerance: float = 0.0  # points a `hold` rule may lose

    RANGES = {"tolerance": NON_NEGATIVE}

    def __post_init__(self) -> None:
        check_ranges(self)
        if self.better not in ("higher", "lower"):
            raise ValueError(f"gate rule {self.metric!r}: better {self.better!r}; expected 'higher' or 'lower'")
        if self.require not in ("improve", "hold"):
            raise ValueError(f"gate rule {self.metric!r}: require {self.require!r}; expected 'improve' or 'hold'")


def default_rules() -> list[Rule]:
    """AMBER score up and CHAIR down; no suite benchmark or zero-shot dataset worse by over a point."""
    return [
        Rule("amber.amber_score", "higher", "improve"),
        Rule("amber.generative.chair", "lower", "improve"),
        Rule("suite.*.headline", "higher", "hold", tolerance=1.0),
        Rule("zero_shot.*.top1", "higher", "hold", tolerance=1.0),
    ]


@dataclass(frozen=True)
class GateConfig:
    rules: list[Rule] = field(default_factory=default_rules)
    pointer: str = ""  # the promoted pointer's URI; default s3://<run bucket>/promoted
    candidate: str = ""  # the model judged (a name in metrics.json); default the last one evaluated


@dataclass(frozen=True)
class Check:
    rule: str
    metric: str
    candidate: float | None
    reference: float | None
    passed: bool
    why: str


def _expand(tree: Any, parts: list[str], prefix: str = "") -> dict[str, Any]:
    """Every value at the dotted path `parts` (with `*` wildcards), keyed by its concrete path."""
    if not parts:
        return {prefix: tree}
    if not isinstance(tree, dict):
        return {}
    keys = sorted(tree) if parts[0] == "*" else [parts[0]] if parts[0] in tree else []
    found: dict[str, Any] = {}
    for key in keys:
        found.update(_expand(tree[key], parts[1:], f"{prefix}.{key}" if prefix else key))
    return found


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def check_one(rule: Rule, metric: str, candidate: float | None, reference: float | None) -> Check:
    tolerance = f", tolerance {rule.tolerance}" if rule.tolerance else ""
    described = f"{rule.metric} {rule.better} ({rule.require}{tolerance})"
    if candidate is None:
        return Check(described, metric, candidate, reference, False, "the candidate has no value")
    if reference is None:
        return Check(described, metric, candidate, reference, True, "no reference value: nothing to compare")
    gain = candidate - reference if rule.better == "higher" else reference - candidate
    if rule.require == "improve":
        return Check(described, metric, candidate, reference, gain > 0, f"gain {gain:+.4g} (must be > 0)")
    return Check(
        described,
        metric,
        candidate,
        reference,
        gain >= -rule.tolerance,
        f"gain {gain:+.4g} (must be >= {-rule.tolerance:g})",
    )


def check_rule(rule: Rule, candidate: dict, reference: dict) -> list[Check]:
    """One rule on two models' results; a wildcard rule checks every metric either side has."""
    parts = rule.metric.split(".")
    found_candidate, found_reference = _expand(candidate, parts), _expand(reference, parts)
    metrics = sorted(set(found_candidate) | set(found_reference))
    if not metrics and "*" not in parts:
        metrics = [rule.metric]  # a named metric nobody has: the candidate fails it
    return [check_one(rule, m, _number(found_candidate.get(m)), _number(found_reference.get(m))) for m in metrics]


def decide(rules: list[Rule], candidate: dict, reference: dict) -> tuple[bool, list[Check]]:
    """Whether `candidate` passes every rule against `reference`, and each check."""
    checks = [each for rule in rules for each in check_rule(rule, candidate, reference)]
    return all(each.passed for each in checks), checks


def decision_record(passed: bool, checks: list[Check], candidate: dict, reference: dict) -> dict:
    """The JSON the gate writes: the verdict, each check, and both sides' model and run."""
    return {
        "passed": passed,
        "checks": [asdict(each) for each in checks],
        "candidate": candidate,
        "reference": reference,
    }


def markdown(record: dict) -> str:
    """The decision as a Markdown table (for a CI job summary)."""
    verdict = "PASSED: promoted" if record["passed"] else "REFUSED: not promoted"
    lines = [
        f"## Promotion gate: {verdict}",
        "",
        f"candidate `{record['candidate'].get('model')}` vs reference `{record['reference'].get('model')}`"
        + (f" ({record['reference']['note']})" if record["reference"].get("note") else ""),
        "",
        "| metric | candidate | reference | rule | result |",
        "|---|---|---|---|---|",
    ]
    for each in record["checks"]:
        values = ["–" if v is None else f"{v:.2f}" for v in (each["candidate"], each["reference"])]
        lines.append(
            f"| {each['metric']} | {values[0]} | {values[1]} | {each['rule']} | "
            f"{'pass' if each['passed'] else 'FAIL'}: {each['why']} |"
        )
    pointer = record.get("pointer", {})
    if pointer:
        lines += [
            "",
            f"pointer `{pointer.get('uri')}`: {'moved' if pointer.get('moved') else 'unchanged'}"
            f"{' (' + pointer['note'] + ')' if pointer.get('note') else ''}",
        ]
    return "\n".join(lines) + "\n"


# -- the promoted pointer --------------------------------------------------------------------------


class PointerMoved(RuntimeError):
    """The pointer changed between reading it and moving it (another run promoted first)."""


def read_pointer(storage: Storage, uri: str) -> tuple[dict | None, str | None]:
    """The pointer's JSON and its version for `move_pointer` (S3 ETag; locally the sha256), or (None, None)."""
    try:
        data, version = storage.read_versioned(uri)
    except NotFound:
        return None, None
    return json.loads(data), version


def move_pointer(storage: Storage, uri: str, record: dict, version: str | None) -> None:
    """Write the pointer only if it is still what was read (`version`; None: only if it does not exist): the
    store's conditional write (Storage.write_if), so two runs promoting at once cannot both win."""
    data = json.dumps(record, indent=2, sort_keys=True).encode()
    try:
        storage.write_if(uri, data, version)
    except PreconditionFailed as err:
        raise PointerMoved(f"{uri}: changed since it was read (conditional write refused)") from err


# -- the step ----------------------------------------------------------------------------------------


def sides(metrics: dict, candidate_name: str, promoted: dict | None) -> tuple[dict, dict]:
    """The candidate (a model of this run's metrics.json) and the reference: the promoted model, or, when
    nothing was promoted yet, this run's baseline (the base model it trained from)."""
    models = {model["name"]: model for model in metrics["models"]}
    name = candidate_name or metrics["models"][-1]["name"]
    if name not in models:
        raise ValueError(f"gate_config.candidate {name!r}: not a model of the evaluation ({sorted(models)})")
    candidate = {"name": name, "model": models[name]["path"], "results": metrics["results"][name]}
    note = "nothing promoted yet: compared with this run's base model"
    if promoted is not None and not comparable(promoted, metrics):
        # another benchmark (another world, new data, other decoding): its numbers do not compare with this run's
        note = (
            f"the promoted model ({promoted['model']}) was measured on other benchmarks "
            f"({promoted.get('benchmarks')} vs this run's {metrics.get('benchmarks')}): compared with this run's "
            "base model"
        )
        promoted = None
    if promoted is not None:
        return candidate, {
            "name": "promoted",
            "model": promoted["model"],
            "run_root": promoted.get("run_root"),
            "results": promoted["metrics"],
        }
    base = metrics["baseline"]
    return candidate, {
        "name": base,
        "model": models[base]["path"],
        "results": metrics["results"][base],
        "note": note,
    }


def comparable(promoted: dict, metrics: dict) -> bool:
    """Whether the promoted model's numbers were measured on this run's benchmarks (metrics.json's `benchmarks`
    fingerprint); a pointer or an evaluation from before the fingerprint counts as comparable, as it did then."""
    theirs, ours = promoted.get("benchmarks"), metrics.get("benchmarks")
    return theirs is None or ours is None or theirs == ours


def run(cfg: GateConfig, report_uri: str, pointer: str, run_root: str, storage: Storage) -> dict:
    """Decide on the run's evaluation at `report_uri` and, on pass, move `pointer`; the decision record."""
    if not report_uri:
        return {
            "passed": False,
            "checks": [],
            "candidate": {},
            "reference": {},
            "pointer": {"uri": pointer, "moved": False, "note": "no evaluation configured: nothing to judge"},
        }
    metrics = json.loads(storage.read_bytes(report_uri.rstrip("/") + "/metrics.json"))
    promoted, etag = read_pointer(storage, pointer)
    candidate, reference = sides(metrics, cfg.candidate, promoted)
    passed, checks = decide(cfg.rules, candidate["results"], reference["results"])
    record = decision_record(passed, checks, candidate, reference)
    record["pointer"] = {"uri": pointer, "moved": False, "previous": promoted and promoted["model"]}
    if passed and not metrics.get("complete", True):
        record["passed"], record["pointer"]["note"] = False, "the evaluation is incomplete: not promoted"
    elif passed:
        try:
            move_pointer(
                storage,
                pointer,
                {
                    "model": candidate["model"],
                    "run_root": run_root,
                    "metrics": candidate["results"],
                    "benchmarks": metrics.get("benchmarks"),
                },
                etag,
            )
            record["pointer"]["moved"] = True
        except PointerMoved as err:
            record["pointer"]["note"] = str(err)
    return record


def read_decision(storage: Storage, uri: str) -> dict:
    """The gate's decision record at `uri`, or a `UserError` saying why it is not one."""
    try:
        record = json.loads(storage.read_bytes(uri))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{uri}: not valid JSON ({err}); expected the gate's decision.json") from None
    fields = {"passed": bool, "checks": list, "candidate": dict, "reference": dict, "pointer": dict}
    if not isinstance(record, dict) or any(not isinstance(record.get(k), t) for k, t in fields.items()):
        raise UserError(
            f"{uri}: not a gate decision (expected an object with {sorted(fields)}); "
            "--decision names <run root>/gate/decision.json"
        )
    return record


@exit_2_on_user_error
def main(argv: list[str] | None = None) -> int:
    """python -m clipdpo.gate --decision URI [--summary FILE]: print the decision (and the evaluation
    report beside it) as Markdown, append it to FILE (CI: $GITHUB_STEP_SUMMARY); exit 1 unless promoted."""
    parser = ArgumentParser(prog="python -m clipdpo.gate", description=main.__doc__)
    parser.add_argument("--decision", required=True, help="the gate's decision.json (<run root>/gate/decision.json)")
    parser.add_argument("--summary", default="", help="append the Markdown here (e.g. $GITHUB_STEP_SUMMARY)")
    parser.add_argument("--debug", action="store_true", help="show the Python traceback of a user error")
    args = parser.parse_args(argv)
    storage = Storage()
    record = read_decision(storage, args.decision)
    text = markdown(record)
    from clipdpo.stages import stage

    report = join(args.decision.rsplit("/", 2)[0], stage("evaluate").artifact, "report.md")  # <run root>/gate/..
    if storage.exists(report):
        text += "\n" + storage.read_bytes(report).decode()
    print(text)
    if args.summary:
        try:
            with open(args.summary, "a", encoding="utf-8") as handle:
                handle.write(text)
        except OSError as err:
            raise UserError(f"--summary {args.summary}: cannot be written ({err.strerror})") from err
    promoted = record["passed"] and record["pointer"]["moved"]
    if not promoted:
        print(f"gate: the model was NOT promoted ({args.decision}): see the failed checks above", flush=True)
    return 0 if promoted else 1


if __name__ == "__main__":
    raise SystemExit(main())
