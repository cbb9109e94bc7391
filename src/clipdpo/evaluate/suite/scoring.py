"""A LLaVA-suite benchmark's metrics from its items and the model's replies, by the benchmark's own rules."""

from __future__ import annotations

from collections import defaultdict

from clipdpo.evaluate.data import EvalInputError, Item
from clipdpo.evaluate.suite import mmbench, mme, pope, scienceqa, vqa


def _pope(rows: list[dict], replies: list[str]) -> dict:
    splits: dict[str, list[int]] = defaultdict(list)
    for position, row in enumerate(rows):
        splits[row["category"]].append(position)
    per_split = {split: pope.pope_metrics([rows[i]["answer"] for i in where], [replies[i] for i in where])
                 for split, where in sorted(splits.items())}
    f1 = 100 * sum(m["f1"] for m in per_split.values()) / len(per_split)
    return {"headline": f1, "f1_mean": f1, "splits": per_split}


def _mme(rows: list[dict], replies: list[str]) -> dict:
    scores = mme.mme_scores([mme.MMEItem(row["category"], row["image"], row["answer"], reply)
                             for row, reply in zip(rows, replies)])
    return {"headline": scores["perception"], **scores}


def _accuracy(correct: list[bool]) -> dict:
    accuracy = 100 * sum(correct) / len(correct)
    return {"headline": accuracy, "accuracy": accuracy, "questions": len(correct)}


def _scienceqa(rows: list[dict], replies: list[str]) -> dict:
    correct = [scienceqa.scienceqa_correct(r, row["answer"], len(row["choices"])) for r, row in zip(replies, rows)]
    failed = sum(scienceqa.scienceqa_letter(r) == "FAILED" for r in replies)
    return {**_accuracy(correct), "unparsed": failed}


def _mmbench(rows: list[dict], replies: list[str]) -> dict:
    result = mmbench.mmbench_circular([{"index": row["index"], "prediction": r, "answer": row["answer"]}
                                       for r, row in zip(replies, rows)])
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
