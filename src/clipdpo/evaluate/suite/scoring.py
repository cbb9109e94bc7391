"""A LLaVA-suite benchmark's metrics from its items and the model's replies, by the benchmark's own rules."""

from __future__ import annotations

from collections import defaultdict
from typing import Sequence

from clipdpo.evaluate.bootstrap import PerImage, by_image
from clipdpo.evaluate.data import EvalInputError, Item
from clipdpo.evaluate.suite import mmbench, mme, pope, scienceqa, vqa


def _pope(rows: list[dict], replies: list[str]) -> dict:
    splits: dict[str, list[int]] = defaultdict(list)
    for position, row in enumerate(rows):
        splits[row["category"]].append(position)
    per_split = {
        split: pope.pope_metrics([rows[i]["answer"] for i in where], [replies[i] for i in where])
        for split, where in sorted(splits.items())
    }
    return {**_pope_means(per_split), "splits": per_split}


def _pope_means(per_split: dict[str, dict]) -> dict[str, float]:
    """The headline (F1 averaged over splits, %) and the accuracy averaged over splits (%)."""
    f1 = 100 * sum(m["f1"] for m in per_split.values()) / len(per_split)
    accuracy = 100 * sum(m["accuracy"] for m in per_split.values()) / len(per_split)
    return {"headline": f1, "f1_mean": f1, "accuracy_mean": accuracy}


POPE_COUNTS = ("tp", "fp", "tn", "fn")


def pope_per_image(items: list[Item], responses: dict[str, str]) -> PerImage:
    """Each image's confusion matrix per split (columns `<split>.tp` ...): what a bootstrap over images resamples."""
    rows = [item.fields for item in items]
    splits = sorted({row["category"] for row in rows})
    columns = [f"{split}.{count}" for split in splits for count in POPE_COUNTS]
    per_item = (
        (
            item.image,
            {
                f"{item.fields['category']}.{k}": v
                for k, v in pope.pope_counts([item.fields["answer"]], [responses[item.id]]).items()
            },
        )
        for item in items
    )
    return by_image(per_item, columns)


def pope_measure(totals: dict[str, float]) -> dict[str, float | None]:
    """`_pope_means` from summed per-image counts; None when a resample holds no question of some split."""
    splits = sorted({column.rsplit(".", 1)[0] for column in totals})
    counts = {split: {k: totals[f"{split}.{k}"] for k in POPE_COUNTS} for split in splits}
    if any(sum(c.values()) == 0 for c in counts.values()):
        return {"headline": None, "accuracy_mean": None}
    means = _pope_means({split: pope.pope_from_counts(**c) for split, c in counts.items()})
    return {"headline": means["headline"], "accuracy_mean": means["accuracy_mean"]}


def _mme(rows: list[dict], replies: list[str]) -> dict:
    scores = mme.mme_scores(
        [mme.MMEItem(row["category"], row["image"], row["answer"], reply) for row, reply in zip(rows, replies)]
    )
    return {"headline": scores["perception"], **scores}


def _accuracy(correct: Sequence[float]) -> dict:
    """`correct`: each question's score, 0-1 (right or wrong, or VQA's partial credit)."""
    accuracy = 100 * sum(correct) / len(correct)
    return {"headline": accuracy, "accuracy": accuracy, "questions": len(correct)}


def _scienceqa(rows: list[dict], replies: list[str]) -> dict:
    correct = [scienceqa.scienceqa_correct(r, row["answer"], len(row["choices"])) for r, row in zip(replies, rows)]
    failed = sum(scienceqa.scienceqa_letter(r) == "FAILED" for r in replies)
    return {**_accuracy(correct), "unparsed": failed}


def _mmbench(rows: list[dict], replies: list[str]) -> dict:
    result = mmbench.mmbench_circular(
        [{"index": row["index"], "prediction": r, "answer": row["answer"]} for r, row in zip(replies, rows)]
    )
    return {"headline": 100 * result["circular_accuracy"], **result}


def score(kind: str, items: list[Item], responses: dict[str, str]) -> dict:
    """The benchmark's metrics; `headline` is the number of the paper's Table 4 (MME: perception score)."""
    missing = [item.id for item in items if item.id not in responses]
    if missing:
        raise EvalInputError(f"{kind}: {len(missing)} item(s) have no response, e.g. {missing[:5]}")
    replies = [responses[item.id] for item in items]
    rows = [item.fields for item in items]
    match kind:
        case "pope":
            return _pope(rows, replies)
        case "mme":
            return _mme(rows, replies)
        case "gqa":
            return _accuracy([vqa.gqa_correct(r, row["answer"]) for r, row in zip(replies, rows)])
        case "textvqa":
            return _accuracy([vqa.vqa_accuracy(r, row["answers"]) for r, row in zip(replies, rows)])
        case "scienceqa":
            return _scienceqa(rows, replies)
        case "mmbench":
            return _mmbench(rows, replies)
    raise ValueError(f"unknown benchmark kind {kind!r}")
