"""python -m clipdpo_lab loss-ablation: the DPO loss variants of the paper's Table 5 on a finished world run.

Sec. 7.1 compares the loss CLIP-DPO trains with: DPO (beta 0.1, the paper's default, and 0.3), IPO, KTO,
SLiC and cDPO (DPO with label smoothing 0.1, beta 0.1 and 0.3); `train.loss_type` and `train.beta`,
`train.label_smoothing` (clipdpo.train.loss). This reuses a run of `make pipeline-run` (its pairs, and its
trained model `clipdpo`, which is DPO with beta 0.1) and reruns only train per variant of VARIANTS on the
run's own pairs (no refilter), each under `<run_root>-loss-<variant>`, with every other train setting the
world's (learning rate, epochs, batch, ...). The reference log-probs are computed once for all variants
under `<run_root>-loss` (not beside the run's pairs: the run is only read). Then one AMBER evaluation of
base, clipdpo and every variant goes to `<run_root>-loss/evaluation` (base's and clipdpo's responses copied
from the run's own evaluation), and the table to `<state-dir>/reports/<run-id>/loss.md`
(clipdpo_lab/ablation.py: what the ablations share).
"""

from __future__ import annotations

import json

from clipdpo.storage import Storage, join
from clipdpo_lab import ablation

# The run's own model: the paper's default loss, DPO (sigmoid) with beta 0.1 and no label smoothing.
PAPER = {"loss_type": "sigmoid", "beta": 0.1, "label_smoothing": 0.0}
# What each variant sets in the world's train config: all three loss settings, so that a row is its loss
# whatever the world's defaults. Table 5 gives beta only for DPO and cDPO; IPO, KTO and SLiC take DPO's 0.1.
VARIANTS: dict[str, dict] = {
    "dpo-beta0.3": {"loss_type": "sigmoid", "beta": 0.3, "label_smoothing": 0.0},
    "ipo": {"loss_type": "ipo", "beta": 0.1, "label_smoothing": 0.0},
    "kto": {"loss_type": "kto_pair", "beta": 0.1, "label_smoothing": 0.0},
    "slic": {"loss_type": "hinge", "beta": 0.1, "label_smoothing": 0.0},
    "cdpo-beta0.1": {"loss_type": "sigmoid", "beta": 0.1, "label_smoothing": 0.1},
    "cdpo-beta0.3": {"loss_type": "sigmoid", "beta": 0.3, "label_smoothing": 0.1},
}
LABELS = {
    "base": "base (no DPO)",
    "clipdpo": "DPO β 0.1 (the paper's default: the run's model)",
    "dpo-beta0.3": "DPO β 0.3",
    "ipo": "IPO (β 0.1)",
    "kto": "KTO (paired, β 0.1)",
    "slic": "SLiC (hinge, β 0.1)",
    "cdpo-beta0.1": "cDPO (β 0.1, LS 0.1)",
    "cdpo-beta0.3": "cDPO (β 0.3, LS 0.1)",
}


def variant_train_config(world_train: dict, variant: str, reference_cache: str) -> dict:
    """The world's train config with the variant's loss; reference log-probs cached at `reference_cache`."""
    return {**world_train, **VARIANTS[variant], "reference_cache": reference_cache}


def run_row_mismatches(run_config: dict, world_train: dict) -> dict[str, tuple]:
    """key -> (the run's value, the wanted one) wherever the run's model was not trained with the world's train
    settings and the paper's loss: then its row would not be what the table calls it."""
    wanted = {**world_train, **PAPER}
    return {key: (run_config.get(key), value) for key, value in wanted.items() if run_config.get(key) != value}


def check_run(configs: dict[str, dict], run_root: str) -> None:
    """Refuse a run whose model is not DPO beta 0.1 with the world's other train settings."""
    from clipdpo import steps
    from clipdpo.train.recipe import SUMMARY

    summary = join(steps.artifact_uri(run_root, "train"), SUMMARY)
    mismatches = run_row_mismatches(json.loads(Storage().read_bytes(summary))["config"], configs["world_train"])
    if mismatches:
        found = ", ".join(f"{key}={got!r} (wanted {want!r})" for key, (got, want) in mismatches.items())
        raise SystemExit(
            f"{summary}: the run's model was not trained with the paper's loss and the world's train "
            f"config ({found}); the table's DPO β 0.1 row would be something else: make a fresh run"
        )


def train_variant(configs: dict[str, dict], run_root: str, variant: str, say=print) -> int:
    """Train the variant on the run's own pairs under the variant's root; the number of pairs."""
    from clipdpo import steps
    from clipdpo.artifacts import Artifact

    pairs_uri = steps.artifact_uri(run_root, "filter")
    pairs = Artifact.open(Storage(), pairs_uri, kind="pairs").manifest.rows
    train = variant_train_config(configs["world_train"], variant, join(LOSS.root(run_root), "refcache"))
    say(f"loss ablation, {variant}: train {json.dumps(VARIANTS[variant])} on the run's {pairs} pairs ...")
    steps.train_step(LOSS.variant_root(run_root, variant), json.dumps(train), launcher="local", pairs_uri=pairs_uri)
    return pairs


LOSS = ablation.Ablation("loss", "Loss", VARIANTS, LABELS, train_variant, check_run)


def main(argv: list[str] | None = None) -> int:
    return ablation.main(LOSS, argv, "python -m clipdpo_lab.loss_ablation", __doc__)


if __name__ == "__main__":
    raise SystemExit(main())
