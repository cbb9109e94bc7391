"""The filter stage end to end on a hand-made scores artifact (local paths, no models)."""

import pyarrow as pa

from clipdpo.artifacts import Artifact, ArtifactWriter
from clipdpo.filter.__main__ import main as filter_main
from clipdpo.schemas import IMAGES, SCORES
from clipdpo.storage import Storage
from tests.clipdpo.test_filter_rules import _scores_table, cap, qa


def write_scores(root) -> str:
    storage = Storage()
    images = ArtifactWriter(storage, f"{root}/images", "images", {}, [])
    images.write_shard(
        "part-00000",
        pa.Table.from_pylist(
            [dict(image_id=i, source="t", uri=i, image=b"x", width=1, height=1) for i in ("a", "b")], schema=IMAGES
        ),
    )
    images.finalize(["part-00000"])
    rows = [
        cap("a", "a dog on a red sofa", 31.0),
        cap("a", "a dog on a blue sofa", 28.0),
        cap("b", "two people walking", 30.0),
        qa("a", "What color is the sofa?", "red", "green", 26.0, 30.0, 24.0),
    ]
    scores = ArtifactWriter(storage, f"{root}/scores", "scores", {}, [Artifact.open(storage, f"{root}/images")])
    scores.write_shard("part-00000", _scores_table(rows).cast(SCORES))
    scores.finalize(["part-00000"])
    return f"{root}/scores"


def test_zero_pairs_are_said_with_the_per_rule_counts(tmp_path, capsys):
    scores = write_scores(tmp_path)
    code = filter_main(
        [
            "--input",
            scores,
            "--output",
            str(tmp_path / "pairs"),
            "--set",
            "caption_min_score=99",
            "--set",
            "question_min_score=99",
            "--set",
            "text_keep_fraction=1.0",
        ]
    )
    err = capsys.readouterr().err
    assert code == 0
    assert Artifact.open(Storage(), str(tmp_path / "pairs")).manifest.rows == 0
    line = next(line for line in err.splitlines() if "pairs kept" in line)
    assert "WARNING" in line and "0 pairs kept: rows_in=4, captions_kept=0, qa_kept=0" in line
    assert "caption_low_score=3" in line and "question_low_score=1" in line


def test_pairs_kept_are_counted(tmp_path, capsys):
    scores = write_scores(tmp_path)
    assert filter_main(["--input", scores, "--output", str(tmp_path / "pairs"), "--set", "text_keep_fraction=1.0"]) == 0
    assert "2 pairs kept (1 caption, 1 QA)" in capsys.readouterr().err
