"""Scorers of the LLaVA benchmark suite, each following its benchmark's own evaluation code.

POPE: LLaVA's `eval_pope.py` answer parsing (first sentence, commas dropped, "No"/"not"/"no" as
a word means no, anything else yes) and acc/P/R/F1/yes-ratio with "yes" positive.
MME: the official `calculation.py` answer parsing (exact yes/no, else look in the first four
characters) and, per subtask, accuracy + accuracy+ (both questions of an image right); the
perception score is the sum over the ten perception subtasks.
MMBench: circular evaluation; a question counts only if every rotation of its options is
answered correctly (rotations share `index % 1_000_000`).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

MME_PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark",
                  "artwork", "OCR")


def pope_answer(text: str) -> str:
    if "." in text:
        text = text.split(".")[0]
    words = text.replace(",", "").split(" ")
    return "no" if ("No" in words or "not" in words or "no" in words) else "yes"


def pope_metrics(labels: list[str], answers: list[str]) -> dict:
    """labels: 'yes'/'no'; answers: the model's free text."""
    if len(labels) != len(answers):
        raise ValueError(f"POPE: {len(labels)} labels but {len(answers)} answers")
    predictions = [pope_answer(a) == "yes" for a in answers]
    truth = [label.strip().lower() == "yes" for label in labels]
    tp = sum(p and t for p, t in zip(predictions, truth))
    fp = sum(p and not t for p, t in zip(predictions, truth))
    tn = sum(not p and not t for p, t in zip(predictions, truth))
    fn = sum(not p and t for p, t in zip(predictions, truth))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"accuracy": (tp + tn) / len(truth), "precision": precision, "recall": recall, "f1": f1,
            "yes_ratio": sum(predictions) / len(predictions), "tp": tp, "fp": fp, "tn": tn, "fn": fn}


def mme_answer(text: str) -> str:
    text = text.lower()
    if text in ("yes", "no"):
        return text
    prefix = text[:4]
    if "yes" in prefix:
        return "yes"
    if "no" in prefix:
        return "no"
    return "other"


@dataclass(frozen=True)
class MMEItem:
    subtask: str
    image: str
    truth: str  # "Yes" / "No"
    answer: str


def mme_scores(items: list[MMEItem]) -> dict:
    """Per subtask: acc, acc+ and score = acc + acc+ (0-200); `perception` sums the ten perception ones."""
    by_subtask: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    for item in items:
        by_subtask[item.subtask][item.image].append(mme_answer(item.answer) == item.truth.lower())
    out = {}
    for subtask, images in by_subtask.items():
        results = [r for answers in images.values() for r in answers]
        accuracy = 100 * sum(results) / len(results)
        accuracy_plus = 100 * sum(all(answers) for answers in images.values()) / len(images)
        out[subtask] = {"acc": accuracy, "acc_plus": accuracy_plus, "score": accuracy + accuracy_plus}
    out["perception"] = sum(out[s]["score"] for s in MME_PERCEPTION if s in out)
    out["perception_complete"] = all(s in by_subtask for s in MME_PERCEPTION)
    return out


def mmbench_circular(records: list[dict]) -> dict:
    """records: {"index": int, "prediction": letter, "answer": letter}; circular accuracy and vanilla."""
    groups: dict[int, list[bool]] = defaultdict(list)
    for record in records:
        prediction = str(record["prediction"]).strip().upper()[:1]
        groups[int(record["index"]) % 1_000_000].append(prediction == str(record["answer"]).strip().upper())
    circular = sum(all(results) for results in groups.values()) / len(groups)
    vanilla = sum(results[0] for results in groups.values()) / len(groups)
    return {"circular_accuracy": circular, "vanilla_accuracy": vanilla, "questions": len(groups)}
