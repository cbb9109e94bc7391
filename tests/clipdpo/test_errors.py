"""Every row of the README's troubleshooting table: one line, exit code 2, no traceback."""

import io

import pytest
from PIL import Image

from clipdpo.filter.__main__ import main as filter_main
from clipdpo.ingest.__main__ import main as ingest_main
from tests.clipdpo.test_filter_stage import write_scores


@pytest.fixture
def images_dir(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, format="PNG")
    (folder / "a.png").write_bytes(buffer.getvalue())
    return folder


def _one_error_line(capsys, code, expected):
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    assert expected in lines[0], lines[0]
    return lines[0]


ROWS = {
    "missing --source": (lambda t, d: ingest_main(["--output", str(t / "o")]), "no --source given"),
    "source folder missing": (
        lambda t, d: ingest_main(["--source", str(t / "nope"), "--output", str(t / "o")]),
        "nope: no such folder",
    ),
    "config file missing": (
        lambda t, d: ingest_main(["--source", str(d), "--output", str(t / "o"), "--config", str(t / "missing.json")]),
        "missing.json: no such file",
    ),
    "config file not JSON": (
        lambda t, d: (
            (t / "bad.json").write_text("{oops")
            and ingest_main(["--source", str(d), "--output", str(t / "o"), "--config", str(t / "bad.json")])
        ),
        "bad.json: not valid JSON",
    ),
    "input artifact missing": (
        lambda t, d: filter_main(["--input", str(t / "scores"), "--output", str(t / "p")]),
        "scores: no manifest.json",
    ),
    "unknown config key": (
        lambda t, d: filter_main(["--input", str(t / "s"), "--output", str(t / "p"), "--set", "caption_min_scor=3"]),
        "unknown key(s) ['caption_min_scor']",
    ),
    "threshold of the wrong type": (
        lambda t, d: filter_main(
            ["--input", str(t / "s"), "--output", str(t / "p"), "--set", "caption_min_score=high"]
        ),
        "caption_min_score: expected a number, got 'high'",
    ),
    "value out of range": (
        lambda t, d: ingest_main(["--source", str(d), "--output", str(t / "o"), "--set", "shard_size=0"]),
        "shard_size must be >= 1",
    ),
    "filter output is its input": (
        lambda t, d: filter_main(["--input", write_scores(t), "--output", str(t / "scores"), "--overwrite"]),
        "is (or lies in the shard folders of) its input",
    ),
    "output inside the input": (
        lambda t, d: ingest_main(["--source", str(d), "--output", str(d / "out")]),
        "overlaps the input",
    ),
}


@pytest.mark.parametrize("row", sorted(ROWS))
def test_user_error_rows(row, tmp_path, images_dir, capsys):
    action, expected = ROWS[row]
    _one_error_line(capsys, action(tmp_path, images_dir), expected)


def test_s3_rows_wrong_credentials_missing_bucket_unreachable(bucket, tmp_path, images_dir, capsys, monkeypatch):
    out = str(tmp_path / "o")
    code = ingest_main(["--source", "s3://no-such-bucket-here/images", "--output", out])
    _one_error_line(capsys, code, "bucket does not exist")
    import boto3

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)  # botocore caches credentials per session
    code = ingest_main(["--source", f"{bucket}/images", "--output", out])
    _one_error_line(capsys, code, "refused the request (SignatureDoesNotMatch): check AWS_ACCESS_KEY_ID")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("CLIPDPO_S3_MAX_ATTEMPTS", "1")
    code = ingest_main(["--source", f"{bucket}/images", "--output", out])
    _one_error_line(capsys, code, "cannot reach S3 at http://127.0.0.1:9")


def test_debug_shows_the_traceback(tmp_path):
    from clipdpo.ingest.sources import SourceError

    with pytest.raises(SourceError, match="no such folder"):
        ingest_main(["--source", str(tmp_path / "nope"), "--output", str(tmp_path / "o"), "--debug"])


def test_help_says_what_the_flags_do(capsys):
    with pytest.raises(SystemExit):
        ingest_main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--set shard_size=N" in text and "--shard-size" not in text
    assert "builtin:demo" in text and "--debug" in text
