"""User errors of the stage command lines that used to print a traceback (or blame the wrong thing):
each is one `error: ` line on stderr naming what is wrong, and exit code 2."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time

import pytest
from PIL import Image

from clipdpo.evaluate.__main__ import main as evaluate_main
from clipdpo.filter.__main__ import main as filter_main
from clipdpo.ingest.__main__ import main as ingest_main
from tests.clipdpo.test_filter_stage import write_scores

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def one_error_line(capsys, code, expected: str) -> str:
    """The one stderr line of a user error: code 2, no traceback, nothing else on stderr."""
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert expected in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, format="PNG")
    (folder / "a.png").write_bytes(buffer.getvalue())
    return str(folder)


@pytest.fixture
def a_file(tmp_path):
    path = tmp_path / "afile"
    path.write_text("not a folder")
    return str(path)


# -- invalid bucket names ---------------------------------------------------------------------------------


@pytest.mark.parametrize("flag", ["--output", "--input"])
def test_an_invalid_bucket_name_is_one_line(flag, tmp_path, capsys):
    args = {"--input": str(tmp_path / "scores"), "--output": str(tmp_path / "pairs"), flag: "s3://Bad_Bucket!/x"}
    code = filter_main([part for pair in args.items() for part in pair])
    one_error_line(capsys, code, "s3://Bad_Bucket!/x: 'Bad_Bucket!' is not a valid S3 bucket name")


def test_an_invalid_bucket_name_in_a_config_value_is_one_line(tmp_path, capsys):
    code = ingest_main(["--source", "s3://Bad_Bucket!/images", "--output", str(tmp_path / "o")])
    one_error_line(capsys, code, "'Bad_Bucket!' is not a valid S3 bucket name")


# -- --output / --input that is a file or under a file ---------------------------------------------------


@pytest.mark.parametrize("under", [False, True])
def test_an_output_that_is_or_lies_under_a_file(under, images, a_file, capsys):
    output = os.path.join(a_file, "images") if under else a_file
    code = ingest_main(["--source", images, "--output", output])
    line = one_error_line(capsys, code, f"--output {output}: ")
    assert ("lies under" if under else "is a file, not a folder") in line
    assert open(a_file).read() == "not a folder"


@pytest.mark.parametrize("under", [False, True])
def test_an_input_that_is_or_lies_under_a_file(under, tmp_path, a_file, capsys):
    given = os.path.join(a_file, "scores") if under else a_file
    code = filter_main(["--input", given, "--output", str(tmp_path / "pairs")])
    line = one_error_line(capsys, code, f"--input {given}: ")
    assert ("lies under" if under else "is a file, not a folder") in line


def test_an_artifact_opened_at_a_file_says_so(a_file):
    from clipdpo.artifacts import Artifact, ArtifactError
    from clipdpo.storage import Storage

    with pytest.raises(ArtifactError, match="not an artifact: .* is a file, not a folder"):
        Artifact.open(Storage(), a_file)


def test_a_local_write_under_a_file_is_a_storage_error(a_file):
    from clipdpo.storage import NotFound, Storage, StorageError

    with pytest.raises(StorageError, match="cannot be written: .* which is a file, not a folder"):
        Storage().write_bytes(os.path.join(a_file, "x", "y.json"), b"{}")
    with pytest.raises(NotFound):  # read: simply not there
        Storage().read_bytes(os.path.join(a_file, "y.json"))


# -- config files that are not a JSON object -----------------------------------------------------------------

CONFIG_FILES = {
    "null": (b"null", "expected a JSON object of config keys, got null"),
    "a number": (b"3", "expected a JSON object of config keys, got a number"),
    "a list": (b"[1, 2]", "expected a JSON object of config keys, got a list"),
    "not UTF-8": (b"\xff\xfe{}", "not UTF-8 text (byte 0"),
}


@pytest.mark.parametrize("name", sorted(CONFIG_FILES))
def test_a_config_file_that_is_not_an_object(name, tmp_path, images, capsys):
    content, expected = CONFIG_FILES[name]
    path = tmp_path / "ingest.json"
    path.write_bytes(content)
    code = ingest_main(["--source", images, "--output", str(tmp_path / "o"), "--config", str(path)])
    one_error_line(capsys, code, f"{path}: {expected}")


def test_a_config_file_that_is_a_folder(tmp_path, images, capsys):
    code = ingest_main(["--source", images, "--output", str(tmp_path / "o"), "--config", str(tmp_path)])
    one_error_line(capsys, code, f"{tmp_path}: is a folder, not a file")


# -- --set a.b=1 where a is a scalar ----------------------------------------------------------------------------


def test_set_into_a_scalar_of_the_config_file(tmp_path, images, capsys):
    path = tmp_path / "ingest.json"
    path.write_text(json.dumps({"shard_size": 3}))
    code = ingest_main(
        ["--source", images, "--output", str(tmp_path / "o"), "--config", str(path), "--set", "shard_size.b=1"]
    )
    one_error_line(capsys, code, "--set shard_size.b=1: shard_size is an integer, not an object with keys")


def test_set_into_a_scalar_of_untyped_data_names_the_item():
    from clipdpo.config import ConfigError, apply_overrides

    with pytest.raises(ConfigError, match=r"^--set filter.pair_min_margin.x=1: filter.pair_min_margin is a number"):
        apply_overrides({"filter": {"pair_min_margin": 2.0}}, ["filter.pair_min_margin.x=1"])
    with pytest.raises(ConfigError, match=r"^--set 'a..b=1': the key 'a..b' is empty or has an empty part"):
        apply_overrides({}, ["a..b=1"])


def test_set_into_a_list_says_to_set_it_whole(tmp_path, capsys):
    code = evaluate_main(["--output", str(tmp_path / "e"), "--set", "models.name=x", "--dry-run"])
    one_error_line(capsys, code, "--set models.name=x: models is a list, not an object with keys")


# -- evaluate: a model spec without `engine` -------------------------------------------------------------------


def test_a_model_without_engine_runs_on_vllm_and_says_so_when_it_is_missing(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` fails as where it is not installed
    bench = tmp_path / "pope"
    bench.mkdir()
    Image.new("RGB", (4, 4)).save(bench / "i.png")
    (bench / "questions.jsonl").write_text(
        json.dumps({"id": 1, "image": "i.png", "question": "Is there a cat?", "answer": "yes", "category": "c"}) + "\n"
    )
    code = evaluate_main(
        [
            "--output",
            str(tmp_path / "e"),
            "--set",
            'models=[{"name": "base", "path": "org/m"}]',
            "--set",
            f'suite=[{{"kind": "pope", "root": "{bench}"}}]',
        ]
    )
    line = one_error_line(
        capsys,
        code,
        "model 'base' runs on engine 'vllm' (the default when a model spec names "
        "no engine), which is not installed here",
    )
    assert 'set "engine": "hf"' in line


def test_an_unknown_engine_fails_at_parse(tmp_path, capsys):
    code = evaluate_main(
        [
            "--output",
            str(tmp_path / "e"),
            "--set",
            'models=[{"name": "base", "path": "org/m", "engine": "tgi"}]',
            "--dry-run",
        ]
    )
    one_error_line(capsys, code, "engine 'tgi'; expected one of ['hf', 'vllm']")


def test_missing_benchmark_files_are_one_line(tmp_path, capsys):
    code = evaluate_main(
        [
            "--output",
            str(tmp_path / "e"),
            "--set",
            'models=[{"name": "b", "path": "m"}]',
            "--set",
            f'suite=[{{"kind": "pope", "root": "{tmp_path / "nope"}"}}]',
        ]
    )
    one_error_line(capsys, code, "questions.jsonl: missing (pope questions)")


# -- a second run on a busy state dir / output ------------------------------------------------------------------


def test_a_second_s3_server_on_a_busy_state_dir(tmp_path, capsys, monkeypatch):
    from clipdpo import s3server

    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / s3server.PID_FILE).write_text(
            json.dumps({"pid": owner.pid, "owner_pid": owner.pid, "endpoint": "http://127.0.0.1:1"})
        )
        monkeypatch.setattr(s3server, "_is_weed_on", lambda pid, data_dir: pid == owner.pid)
        code = s3server.main(["--dir", str(tmp_path)])
        one_error_line(capsys, code, f"{tmp_path} is served by a running S3 server (pid {owner.pid}")
        assert owner.poll() is None  # the first run's server is left alone
    finally:
        owner.kill()
        owner.wait()


def test_a_second_run_on_a_busy_output(tmp_path, capsys):
    scores = write_scores(tmp_path)
    out = tmp_path / "pairs"
    out.mkdir()
    (out / "_lease.json").write_text(
        json.dumps({"owner": "host pid 1 run other", "fingerprint": "0" * 64, "expires_unix": time.time() + 600})
    )
    code = filter_main(["--input", scores, "--output", str(out)])
    one_error_line(capsys, code, "is being written by another run with a different config: host pid 1 run other")


def test_s3server_dir_that_is_a_file(a_file, capsys):
    from clipdpo import s3server

    one_error_line(capsys, s3server.main(["--dir", a_file]), f"--dir {a_file}: {a_file} is a file, not a folder")


def test_gate_decision_that_is_not_one(tmp_path, capsys):
    from clipdpo import gate

    one_error_line(capsys, gate.main(["--decision", str(tmp_path / "none.json")]), "none.json: no such file")
    (tmp_path / "d.json").write_text("[]")
    one_error_line(capsys, gate.main(["--decision", str(tmp_path / "d.json")]), "d.json: not a gate decision")


# -- what the message blames -------------------------------------------------------------------------------------


def test_an_empty_output_is_called_empty(images, capsys):
    code = ingest_main(["--source", images, "--output", ""])
    line = one_error_line(capsys, code, "--output is empty")
    assert "overlaps" not in line


def test_an_unknown_set_key_blames_the_set_item_not_the_config_file(tmp_path, images, capsys):
    path = tmp_path / "ingest.json"
    path.write_text(json.dumps({"shard_size": 3}))
    code = ingest_main(
        ["--source", images, "--output", str(tmp_path / "o"), "--config", str(path), "--set", "shard_sze=3"]
    )
    line = one_error_line(capsys, code, "error: --set shard_sze=3: unknown key(s) ['shard_sze']")
    assert str(path) not in line


def test_an_unknown_key_of_the_config_file_still_blames_the_file(tmp_path, images, capsys):
    path = tmp_path / "ingest.json"
    path.write_text(json.dumps({"shard_sze": 3}))
    code = ingest_main(
        ["--source", images, "--output", str(tmp_path / "o"), "--config", str(path), "--set", "shard_size=3"]
    )
    one_error_line(capsys, code, f"error: {path}: unknown key(s) ['shard_sze']")


def test_a_bad_value_blames_whoever_set_it(tmp_path, images, capsys):
    path = tmp_path / "ingest.json"
    path.write_text(json.dumps({"shard_size": 0}))
    code = ingest_main(["--source", images, "--output", str(tmp_path / "o"), "--config", str(path)])
    one_error_line(capsys, code, f"error: {path}: shard_size must be >= 1, got 0")
    code = ingest_main(["--source", images, "--output", str(tmp_path / "o"), "--set", "shard_size=-2"])
    one_error_line(capsys, code, "error: --set shard_size=-2: shard_size must be >= 1, got -2")


def test_a_usage_error_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        filter_main(["--input", str(tmp_path), "--output", str(tmp_path / "o"), "--shard", "3/2"])
    one_error_line(capsys, exit_info.value.code, "--shard '3/2': need 0 <= i < n")


# -- through the real entry points --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv,expected",
    [
        (
            ["clipdpo.filter", "--input", "in", "--output", "out", "--set", "pair_min_margin=NaN"],
            "error: --set pair_min_margin=NaN: pair_min_margin: expected a finite number, got nan",
        ),
        (
            ["clipdpo.ingest", "--source", "imgs", "--output", "s3://Bad_Bucket!/x"],
            "error: --output s3://Bad_Bucket!/x: ",
        ),
    ],
)
def test_python_dash_m(argv, expected, tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", *argv],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": os.path.join(ROOT, "src")},
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [done.stderr.strip()] and done.stderr.startswith(expected), done.stderr


# -- a pipeline's configs, checked before anything runs (what pipelines.run can call before submitting) ------------


def test_a_pipeline_config_check_blames_the_stage_set_item():
    import math

    from clipdpo.config import ConfigError, apply_overrides
    from clipdpo.stages import checked as checked_config

    items = ["ingest.shard_sze=3"]
    with pytest.raises(ConfigError, match=r"^--set ingest.shard_sze=3: unknown key\(s\) \['shard_sze'\]"):
        checked_config("ingest", apply_overrides({"ingest": {}}, items)["ingest"], items)
    items = ["train.epochs=2", "filter.pair_min_margin=NaN"]
    configs = apply_overrides({"filter": {"pair_min_margin": 1.0}}, items)
    with pytest.raises(ConfigError, match=r"^--set filter.pair_min_margin=NaN: pair_min_margin: expected a finite"):
        checked_config("filter", configs["filter"], items)
    with pytest.raises(ConfigError, match=r"^filter_config.pair_min_margin: expected a finite number, got nan"):
        checked_config("filter", {"pair_min_margin": math.nan})
    assert checked_config("train", configs["train"], items).epochs == 2
