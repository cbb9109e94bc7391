"""POPE: LLaVA's `eval_pope.py` answer parsing (first sentence, commas dropped, "No"/"not"/"no" as a
word means no, anything else yes) and acc/P/R/F1/yes-ratio with "yes" positive."""

from __future__ import annotations


def pope_answer(text: str) -> str:
    if "." in text:
        text = text.split(".")[0]
    words = text.replace(",", "").split(" ")
    return "no" if ("No" in words or "not" in words or "no" in words) else "yes"


def pope_metrics(labels: list[str], answers: list[str]) -> dict:
    """labels: 'yes'/'no'; answers: the model's free text."""
    if len(labels) != len(answers):
        raise ValueError(f"POPE: {len(labels)} labels but {len(answers)} answers")
    return pope_from_counts(**pope_counts(labels, answers))


def pope_counts(labels: list[str], answers: list[str]) -> dict[str, int]:
    """The confusion matrix ("yes" positive): tp, fp, tn, fn."""
    predictions = [pope_answer(a) == "yes" for a in answers]
    truth = [label.strip().lower() == "yes" for label in labels]
    return {
        "tp": sum(p and t for p, t in zip(predictions, truth)),
        "fp": sum(p and not t for p, t in zip(predictions, truth)),
        "tn": sum(not p and not t for p, t in zip(predictions, truth)),
        "fn": sum(not p and t for p, t in zip(predictions, truth)),
    }


def pope_from_counts(tp: float, fp: float, tn: float, fn: float) -> dict:
    """acc/P/R/F1/yes-ratio from the confusion matrix (also a bootstrap resample's summed counts)."""
    total = tp + fp + tn + fn
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": (tp + tn) / total,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "yes_ratio": (tp + fp) / total,
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
    }
