"""`make loss-ablation`: the variants are Table 5's losses with every other setting the world's, the run's model
must be the paper's DPO beta 0.1, a variant trains on the run's own pairs without writing beside them, the table.
The ablation itself (train -> evaluate per variant on a world) is measured in the README. The losses' values
are checked by hand in tests/clipdpo/test_training_math.py (cDPO: test_cdpo_label_smoothing_mixes_both_directions)."""

from __future__ import annotations

import json

import pytest

from clipdpo import config as config_lib
from clipdpo.storage import Storage, join
from clipdpo.train.config import TrainConfig
from clipdpo.train.loss import LOSS_TYPES
from clipdpo_lab import ablation as shared
from clipdpo_lab import loss_ablation as ablation

LOSS_KEYS = ("loss_type", "beta", "label_smoothing")


def world_train() -> dict:
    """The world's train config as the world build writes it (paths need not exist)."""
    from clipdpo_world import benchmark
    from clipdpo_world.stageconfigs import stage_configs

    paths = {"images": "/w/images", "clip": "/w/clip", "lvlm": "/w/lvlm"}
    configs = stage_configs(paths, benchmark.config("/w/benchmarks"), seed=0, samples_per_image=6, spacy_model=None)
    return configs["train"]


def test_variants_are_table_5_and_change_only_the_loss():
    # Table 5's rows (Sec. 7.1), worked out from the paper: (loss_type, beta, label smoothing)
    table_5 = {
        "dpo-beta0.3": ("sigmoid", 0.3, 0.0),
        "ipo": ("ipo", 0.1, 0.0),
        "kto": ("kto_pair", 0.1, 0.0),
        "slic": ("hinge", 0.1, 0.0),
        "cdpo-beta0.1": ("sigmoid", 0.1, 0.1),
        "cdpo-beta0.3": ("sigmoid", 0.3, 0.1),
    }
    world = world_train()
    run_row = config_lib.from_dict(TrainConfig, world)
    assert (run_row.loss_type, run_row.beta, run_row.label_smoothing) == ("sigmoid", 0.1, 0.0)  # DPO beta 0.1
    assert set(ablation.VARIANTS) == set(table_5)
    assert {row[0] for row in table_5.values()} | {run_row.loss_type} == set(LOSS_TYPES)  # every loss has a row
    for variant, (loss_type, beta, smoothing) in table_5.items():
        config = ablation.variant_train_config(world, variant, "s3://b/runs/r-loss/refcache")
        parsed = config_lib.from_dict(TrainConfig, config, variant)  # a valid train config
        assert (parsed.loss_type, parsed.beta, parsed.label_smoothing) == (loss_type, beta, smoothing), variant
        assert parsed.reference_cache == "s3://b/runs/r-loss/refcache"
        others = {key: value for key, value in config.items() if key not in (*LOSS_KEYS, "reference_cache")}
        assert others == {key: value for key, value in world.items() if key not in LOSS_KEYS}  # lr, epochs, ...
        assert others["learning_rate"] == 5e-5 and others["epochs"] == 2
    assert ablation.LOSS.variant_root("s3://b/runs/r/", "ipo") == "s3://b/runs/r-loss-ipo"
    assert ablation.LOSS.root("s3://b/runs/r/") == "s3://b/runs/r-loss"


def test_the_run_row_must_be_dpo_beta_01_with_the_worlds_settings(bucket):
    world = world_train()
    run_config = config_lib.to_dict(config_lib.from_dict(TrainConfig, world))  # as the run's summary stores it
    assert ablation.run_row_mismatches(run_config, world) == {}
    assert ablation.run_row_mismatches({**run_config, "beta": 0.3}, world) == {"beta": (0.3, 0.1)}
    assert ablation.run_row_mismatches({**run_config, "learning_rate": 1e-4}, world) == {"learning_rate": (1e-4, 5e-5)}
    # a world whose own loss is not the paper's: the run trained with it is refused too
    assert ablation.run_row_mismatches({**run_config, "loss_type": "ipo"}, {**world, "loss_type": "ipo"}) == {
        "loss_type": ("ipo", "sigmoid")
    }

    run_root = join(bucket, "runs", "r")
    summary = join(run_root, "model", "train_summary.json")
    Storage().write_bytes(summary, json.dumps({"config": {**run_config, "beta": 0.3}}).encode())
    with pytest.raises(
        SystemExit,
        match=r"train_summary.json: the run's model was not trained with the paper's "
        r"loss .*beta=0.3 \(wanted 0.1\)",
    ):
        ablation.check_run({"world_train": world}, run_root)
    Storage().write_bytes(summary, json.dumps({"config": run_config}).encode())
    ablation.check_run({"world_train": world}, run_root)  # the paper's loss: accepted


@pytest.mark.slow  # two tiny training runs: ~11 s on a busy 2-core machine
def test_variants_train_on_the_runs_own_pairs_and_write_nothing_beside_them(bucket, tmp_path):
    from pairs_fixture import write_pairs

    from clipdpo.demo.models import build_tiny_llava

    storage, run_root = Storage(), join(bucket, "runs", "r")
    write_pairs(run_root, n_pairs=8, n_shards=1)  # the run's images and pairs, where a world run has them
    before = storage.list_info(run_root)
    tiny = {
        "model": build_tiny_llava(str(tmp_path / "tiny-llava")),
        "learning_rate": 5e-3,
        "epochs": 1,
        "beta": 0.1,
        "global_batch_size": 8,
        "per_device_batch_size": 4,
        "max_length": 64,
        "warmup_ratio": 0.0,
    }
    summaries = {}
    for variant in ("ipo", "cdpo-beta0.3"):
        assert ablation.train_variant({"world_train": tiny}, run_root, variant, say=lambda line: None) == 8
        root = join(bucket, "runs", f"r-loss-{variant}")
        summaries[variant] = json.loads(storage.read_bytes(join(root, "model", "train_summary.json")))
        assert summaries[variant]["pairs"] == join(run_root, "pairs")  # the run's own pairs, no refilter
        trained = summaries[variant]["config"]
        assert {key: trained[key] for key in LOSS_KEYS} == ablation.VARIANTS[variant]
        assert (trained["learning_rate"], trained["global_batch_size"]) == (5e-3, 8)  # the world's settings
        assert storage.exists(join(root, "model", "model", "config.json"))  # a loadable HF model
    assert storage.list_info(run_root) == before  # the run's objects only read: no reference cache beside its pairs
    caches = {summary["reference_cache"] for summary in summaries.values()}
    assert len(caches) == 1 and caches.pop().startswith(join(bucket, "runs", "r-loss", "refcache") + "/")


def test_table_rows_are_base_the_run_then_table_5_in_order():
    def result(chair):
        return {
            "amber": {
                "generative": {"chair": chair, "hal": 2 * chair, "cover": 90.0},
                "discriminative": {"f1": 80.0},
                "amber_score": (100 - chair + 80.0) / 2,
            }
        }

    names = ["base", "clipdpo", *ablation.VARIANTS]
    metrics = {"results": {name: result(10.0 - k) for k, name in enumerate(sorted(names))}}
    lines = shared.table(ablation.LOSS, metrics, {name: 578 for name in names if name != "base"}).splitlines()
    assert lines[0].startswith("| Loss | Pairs | CHAIR")
    assert [line.split(" | ")[0] for line in lines[2:]] == ["| " + ablation.LABELS[name] for name in names]
    assert lines[3].startswith("| DPO β 0.1 (the paper's default: the run's model) | 578 | ")


def test_without_a_finished_run_it_says_which_run_to_make_first(bucket, tmp_path):
    with pytest.raises(SystemExit, match=r"no finished world run to reuse .* `make pipeline-run WORLD=2 RUN_ID=w2`"):
        ablation.main(
            ["--run-id", "w2", "--world", "2", "--run-root", join(bucket, "runs", "w2"), "--state-dir", str(tmp_path)]
        )
