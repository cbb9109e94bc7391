"""`make rules-ablation`: the pair-rule variants, the reuse of a run's scores and responses, the table
(clipdpo_lab/ablation.py, shared with `make loss-ablation`).
The ablation itself (filter -> train -> evaluate per variant on a world) is measured in the README."""

from __future__ import annotations

import pyarrow as pa
import pytest

from clipdpo.config import from_dict
from clipdpo.filter.select import FilterConfig
from clipdpo.storage import Storage, join
from clipdpo_lab import ablation as shared
from clipdpo_lab import rules_ablation as ablation


def test_variants_turn_the_paper_rules_off_and_parse_as_filter_configs():
    paper = FilterConfig()
    configs = {name: from_dict(FilterConfig, changes) for name, changes in ablation.VARIANTS.items()}
    assert (paper.pair_min_margin, paper.pair_min_length_ratio) == (2.0, 0.75)  # what "paper rules" means
    assert (configs["no-margin"].pair_min_margin, configs["no-margin"].pair_min_length_ratio) == (0.0, 0.75)
    assert (configs["no-length"].pair_min_margin, configs["no-length"].pair_min_length_ratio) == (2.0, 0.0)
    assert (configs["neither"].pair_min_margin, configs["neither"].pair_min_length_ratio) == (0.0, 0.0)
    assert ablation.RULES.variant_root("s3://b/runs/r/", "neither") == "s3://b/runs/r-rules-neither"


def test_scores_and_responses_are_reused_not_recomputed(bucket):
    from clipdpo.artifacts import Artifact, ArtifactWriter

    storage = Storage()
    source = join(bucket, "runs", "r", "scores")
    writer = ArtifactWriter(storage, source, "scores", {"run": "r"}, [])
    from clipdpo.schemas import schema_for

    tables = {
        name: pa.Table.from_pylist(
            [
                {"image_id": f"{name}-a", "kind": "caption", "clip_score": 30.0},
                {"image_id": f"{name}-b", "kind": "caption", "clip_score": 27.5},
            ],
            schema=schema_for("scores"),
        )
        for name in ("part-00000", "part-00001")
    }
    for name, table in tables.items():
        writer.write_shard(name, table)
    writer.finalize(list(tables))
    copy = join(bucket, "runs", "r-rules-neither", "scores")
    ablation.copy_scores(source, copy, storage)
    ablation.copy_scores(source, copy, storage)  # a rerun finds the copy complete
    copied = Artifact.open(storage, copy, kind="scores")
    assert {name: table for name, table in copied.iter_shards()} == tables
    assert copied.manifest.inputs == [source]  # the filter follows it to the run's images

    run_eval, target = join(bucket, "runs", "r", "evaluation"), join(bucket, "runs", "r-rules", "evaluation")
    for model in ("base", "clipdpo", "control"):
        storage.write_bytes(
            join(run_eval, "responses", model, "amber-generative-abc", "part-00000.jsonl"),
            f'{{"id": "1", "response": "{model}"}}\n'.encode(),
        )
    assert shared.copy_responses(run_eval, target, ["base", "clipdpo"], storage) == 2
    assert shared.copy_responses(run_eval, target, ["base", "clipdpo"], storage) == 0
    assert (
        storage.read_bytes(join(target, "responses", "clipdpo", "amber-generative-abc", "part-00000.jsonl"))
        == b'{"id": "1", "response": "clipdpo"}\n'
    )
    assert storage.list(join(target, "responses", "control")) == []


def test_table_shows_pairs_and_the_cut_against_base():
    def result(chair, hal, cover, f1):
        return {
            "amber": {
                "generative": {"chair": chair, "hal": hal, "cover": cover, "cog": 1.0},
                "discriminative": {"f1": f1},
                "amber_score": (100 - chair + f1) / 2,
            }
        }

    metrics = {
        "results": {
            "base": result(10.0, 30.0, 95.0, 80.0),
            "neither": result(12.5, 33.0, 90.0, 79.0),
            "clipdpo": result(7.0, 21.0, 94.0, 80.5),
        }
    }  # any order in: base, paper, variants out
    lines = shared.table(ablation.RULES, metrics, {"clipdpo": 578, "neither": 901}).splitlines()
    assert lines[2] == "| base (no DPO) | – | 10.0 | 30.0 | 95.0 | 80.0 | 85.00 |"
    # 7 / 10 - 1 = -30%, 21 / 30 - 1 = -30%; 12.5 / 10 - 1 = +25%, 33 / 30 - 1 = +10%
    assert (
        lines[3]
        == "| paper rules (margin > 2, length >= 0.75) | 578 | 7.0 (-30%) | 21.0 (-30%) | 94.0 | 80.5 | 86.75 |"
    )
    assert lines[4] == "| neither rule | 901 | 12.5 (+25%) | 33.0 (+10%) | 90.0 | 79.0 | 83.25 |"


def test_without_a_finished_run_it_says_which_run_to_make_first(bucket, tmp_path):
    # checked before the world is built or looked up: no world lies in tmp_path
    with pytest.raises(SystemExit, match=r"no finished world run to reuse .* `make pipeline-run WORLD=2 RUN_ID=w2`"):
        ablation.main(
            ["--run-id", "w2", "--world", "2", "--run-root", join(bucket, "runs", "w2"), "--state-dir", str(tmp_path)]
        )
