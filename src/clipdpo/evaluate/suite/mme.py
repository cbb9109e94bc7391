"""MME: the official `calculation.py` answer parsing (exact yes/no, else look in the first four
characters) and, per subtask, accuracy + accuracy+ (both questions of an image right); the
perception score is the sum over the ten perception subtasks."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

MME_PERCEPTION = (
    "existence",
    "count",
    "position",
    "color",
    "posters",
    "celebrity",
    "scene",
    "landmark",
    "artwork",
    "OCR",
)


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
    out: dict[str, dict[str, float]] = {}
    for subtask, images in by_subtask.items():
        results = [r for answers in images.values() for r in answers]
        accuracy = 100 * sum(results) / len(results)
        accuracy_plus = 100 * sum(all(answers) for answers in images.values()) / len(images)
        out[subtask] = {"acc": accuracy, "acc_plus": accuracy_plus, "score": accuracy + accuracy_plus}
    perception = sum(out[s]["score"] for s in MME_PERCEPTION if s in out)
    return {**out, "perception": perception, "perception_complete": all(s in by_subtask for s in MME_PERCEPTION)}
