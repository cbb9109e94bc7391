"""A fuzz of the command lines: malformed paths, config files and --set items through every stage's `main`
(and the gate's and the S3 server's), each a user error: exit code 2, exactly one `error: ` line on stderr,
no traceback, nothing written. The table is the product of the mutations below with each entry point."""

from __future__ import annotations

import io

import pytest
from PIL import Image

# Per stage: its entry point, whether it has --input, an integer and a float field (dotted), a list field.
STAGES = {
    "ingest": ("clipdpo.ingest.__main__", False, "shard_size", None, None),
    "generate": ("clipdpo.generate.__main__", True, "captions_per_model", "sampling.temperature", "captioners"),
    "score": ("clipdpo.score.__main__", True, "image_batch_size", None, "categories.text"),
    "filter": ("clipdpo.filter.__main__", True, "pairs_per_image", "pair_min_margin", None),
    "train": ("clipdpo.train.__main__", True, "epochs", "beta", "lora_target_modules"),
    "evaluate": ("clipdpo.evaluate.__main__", False, "batch_size", "amber.similarity_threshold", "models"),
}

BAD_LOCATIONS = [
    "",
    "   ",
    "{file}",
    "{file}/below",
    "{file}/below/deeper",
    "s3://Bad_Bucket!/x",
    "s3://",
    "s3:///no-bucket",
    "s3://a b/x",
    "s3://bucket*/x",
]
BAD_CONFIG_FILES = {
    "null": b"null",
    "number": b"3",
    "list": b"[1]",
    "string": b'"text"',
    "true": b"true",
    "not utf-8": b"\xff\xfe\x00{",
    "latin-1": '{"a": "\xe9"}'.encode("latin-1"),
    "empty": b"",
    "not json": b"{oops",
    "unknown key": b'{"no_such_key": 1}',
    "nested unknown": b'{"x": {"y": 1}}',
}


def bad_sets(int_field: str, float_field: str | None, list_field: str | None) -> list[str]:
    items = [
        "novalue",
        "=3",
        ".a=1",
        "a.=1",
        "a..b=1",
        "no_such_key=1",
        "no.such.key=1",
        f"{int_field}=NaN",
        f"{int_field}=-1",
        f"{int_field}=0.5",
        f"{int_field}=text",
        f"{int_field}=true",
        f"{int_field}=[]",
        f"{int_field}={{}}",
        f"{int_field}=null",
        f"{int_field}=1e999",
        f"{int_field}.x=1",
        f"{int_field}.x.y=1",
    ]
    if float_field:
        items += [
            f"{float_field}=NaN",
            f"{float_field}=Infinity",
            f"{float_field}=-Infinity",
            f"{float_field}=-1",
            f"{float_field}=1e999",
            f"{float_field}=high",
            f"{float_field}.x=1",
        ]
    if list_field:
        items += [f"{list_field}.x=1", f"{list_field}=3", f"{list_field}=[1]"]
    return items


USAGE = [["--shard", "x"], ["--shard", "1/0"], ["--shard", "-1/2"], ["--nope"]]


def cases():
    """(case id, stage, the arguments to put in place of the stage's good ones)."""
    out = []
    for stage, (_, has_input, int_field, float_field, list_field) in STAGES.items():
        flags = (
            ["--output", "--input"] if has_input else ["--output", "--source"] if stage == "ingest" else ["--output"]
        )
        for flag in flags:
            for location in BAD_LOCATIONS:
                out.append((f"{stage} {flag}={location!r}", stage, {flag: location}))
        for name in BAD_CONFIG_FILES:
            out.append((f"{stage} --config {name}", stage, {"--config": f"{{config:{name}}}"}))
        out.append((f"{stage} --config folder", stage, {"--config": "{tmp}"}))
        out.append((f"{stage} --config missing", stage, {"--config": "{tmp}/missing.json"}))
        out.append((f"{stage} --config under a file", stage, {"--config": "{file}/c.json"}))
        for item in bad_sets(int_field, float_field, list_field):
            out.append((f"{stage} --set {item}", stage, {"--set": item}))
        for usage in USAGE:
            if usage[0] == "--shard" and stage in ("train", "evaluate"):
                continue  # no --shard: argparse refuses the flag itself, covered by --nope
            out.append((f"{stage} {' '.join(usage)}", stage, {usage[0]: usage[1] if len(usage) > 1 else None}))
    return out


CASES = cases()


@pytest.fixture
def place(tmp_path):
    (tmp_path / "afile").write_text("a file")
    images = tmp_path / "imgs"
    images.mkdir()
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, format="PNG")
    (images / "a.png").write_bytes(buffer.getvalue())
    for name, content in BAD_CONFIG_FILES.items():
        (tmp_path / f"config-{name.replace(' ', '-')}.json").write_bytes(content)
    return tmp_path


def _fill(text: str, place) -> str:
    for name in BAD_CONFIG_FILES:
        text = text.replace(f"{{config:{name}}}", str(place / f"config-{name.replace(' ', '-')}.json"))
    return text.replace("{file}", str(place / "afile")).replace("{tmp}", str(place))


def argv_for(stage: str, changes: dict, place) -> list[str]:
    """The stage's good arguments (an input that is never reached: the error comes first), with `changes`."""
    has_input = STAGES[stage][1]
    args = {"--output": str(place / "out")}
    if has_input:
        args["--input"] = str(place / "in")
    if stage == "ingest":
        args["--source"] = str(place / "imgs")
    if stage == "evaluate":
        args["--set"] = 'models=[{"name": "b", "path": "m", "engine": "hf"}]'
    argv = [part for flag, value in args.items() if flag not in changes or flag == "--set" for part in (flag, value)]
    for flag, value in changes.items():
        argv += [flag] if value is None else [flag, _fill(value, place)]
    return argv


def run_main(stage: str, argv: list[str]) -> int:
    import importlib

    main = importlib.import_module(STAGES[stage][0]).main
    try:
        return main(argv)
    except SystemExit as exit_info:  # argparse's usage errors
        return exit_info.code


def test_the_table_covers_every_stage_and_mutation():
    assert {stage for _, stage, _ in CASES} == set(STAGES)
    assert len(CASES) >= 250


@pytest.mark.slow(seconds=20)
def test_every_malformed_command_line_is_one_line_and_exit_2(place, capsys):
    """All cases in one test (one report: N cases, how many misbehaved and how), not one test per case."""
    bad = []
    for case, stage, changes in CASES:
        argv = argv_for(stage, changes, place)
        try:
            code = run_main(stage, argv)
        except BaseException as err:  # noqa: BLE001 - an escaped exception is what the fuzz looks for
            code = f"raised {type(err).__name__}: {err}"
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        if code != 2 or "Traceback" in err or len(lines) != 1 or not lines[0].startswith("error: "):
            bad.append(f"{case}: code {code}, stderr {err[-300:]!r}")
        if (place / "out").exists():
            bad.append(f"{case}: wrote {place / 'out'}")
    print(f"command-line fuzz: {len(CASES)} cases, {len(bad)} not one line with exit 2")
    assert not bad, f"{len(bad)} of {len(CASES)} cases:\n" + "\n".join(bad)


def test_gate_and_s3server_fuzz(place, capsys):
    from clipdpo import gate, s3server

    afile = str(place / "afile")
    rows = [
        (gate.main, ["--decision", str(place / "missing.json")]),
        (gate.main, ["--decision", afile]),
        (gate.main, ["--decision", str(place)]),
        (gate.main, ["--decision", f"{afile}/d.json"]),
        (gate.main, ["--decision", "s3://Bad_Bucket!/d.json"]),
        (gate.main, ["--decision", ""]),
        (gate.main, []),
        (gate.main, ["--decision", str(place / "config-not-utf-8.json")]),
        (gate.main, ["--decision", str(place / "config-null.json")]),
        (s3server.main, ["--dir", afile]),
        (s3server.main, ["--dir", f"{afile}/s3"]),
        (s3server.main, ["--env-file", f"{afile}/env"]),
        (s3server.main, ["--nope"]),
    ]
    bad = []
    for main, argv in rows:
        try:
            code = main(argv)
        except SystemExit as exit_info:
            code = exit_info.code
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        if code != 2 or "Traceback" in err or len(lines) != 1 or not lines[0].startswith("error: "):
            bad.append(f"{main.__module__} {argv}: code {code}, stderr {err[-300:]!r}")
    assert not bad, "\n".join(bad)
