"""python -m clipdpo_lab rules-ablation: the paper's pair rules on and off, on a finished world run.

A pair is kept when its CLIP-score margin is over 2.0 and the shorter caption has at least 0.75 of the
longer one's words (Sec. 4.2; `filter.pair_min_margin`, `filter.pair_min_length_ratio`). This reuses
a run of `make pipeline-run` (its scored captions, and its trained model `clipdpo`, which is the
paper's rules) and reruns only filter -> train per variant of VARIANTS, each under
`<run_root>-rules-<variant>`, in this process through the same step functions the components call.
Then one AMBER evaluation of base, clipdpo and every variant goes to `<run_root>-rules/evaluation`; base's
and clipdpo's responses are copied there from the run's own evaluation first (responses are keyed and
resumable), so only the variants are inferred. Prints the table and writes it to
`<state-dir>/reports/<run-id>/rules.md` (clipdpo_lab/ablation.py: what the ablations share).
"""

from __future__ import annotations

import json

from clipdpo.storage import Storage
from clipdpo_lab import ablation

# What each variant changes in the run's filter config (the paper's rules: the run itself, `clipdpo`).
VARIANTS: dict[str, dict] = {
    "no-margin": {"pair_min_margin": 0.0},  # any score difference (ties still give no pair)
    "no-length": {"pair_min_length_ratio": 0.0},  # any length
    "neither": {"pair_min_margin": 0.0, "pair_min_length_ratio": 0.0},
}
LABELS = {
    "base": "base (no DPO)",
    "clipdpo": "paper rules (margin > 2, length >= 0.75)",
    "no-margin": "no margin rule",
    "no-length": "no length rule",
    "neither": "neither rule",
}


def copy_scores(source: str, output: str, storage: Storage) -> None:
    """The run's scores artifact, unchanged, as a variant's own (its filter reads `<root>/scores`)."""
    from clipdpo.artifacts import Artifact, ArtifactWriter

    scores = Artifact.open(storage, source, kind="scores")
    writer = ArtifactWriter(storage, output, "scores", {"copy_of": source}, [scores])
    if writer.is_complete():
        return
    for name, table in scores.iter_shards():
        writer.write_shard(name, table)
    writer.finalize(list(scores.shard_names))


def train_variant(configs: dict[str, dict], run_root: str, variant: str, say=print) -> int:
    """Filter (the variant's rules) and train under the variant's root; the number of pairs."""
    from clipdpo import steps
    from clipdpo.artifacts import Artifact

    storage, root = Storage(), RULES.variant_root(run_root, variant)
    copy_scores(steps.artifact_uri(run_root, "score"), steps.artifact_uri(root, "score"), storage)
    say(f"rules ablation, {variant}: filter {json.dumps(VARIANTS[variant])} ...")
    steps.filter_step(root, json.dumps({**configs["filter"], **VARIANTS[variant]}))
    pairs = Artifact.open(storage, steps.artifact_uri(root, "filter"), kind="pairs").manifest.rows
    say(f"rules ablation, {variant}: train on {pairs} pairs ...")
    steps.train_step(root, json.dumps(configs["train"]), launcher="local")
    return pairs


RULES = ablation.Ablation("rules", "Pair rules", VARIANTS, LABELS, train_variant)


def main(argv: list[str] | None = None) -> int:
    return ablation.main(RULES, argv, "python -m clipdpo_lab.rules_ablation", __doc__)


if __name__ == "__main__":
    raise SystemExit(main())
