"""Parse an instruction LLM's questions with correct and wrong answers, robustly.

Accepted: labelled blocks ("Question: / Correct: / Wrong:", with synonyms, numbering and
Markdown bold), or JSON (an object or list, optionally in a code fence). Blocks that lack a
part are counted as unparseable and dropped, never guessed.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

QA_PROMPT_TEMPLATE = (
    "Here are several descriptions of the same image:\n{captions}\n\n"
    "Write {n} questions about specific, visible details of this image. For each question give "
    "the correct answer according to the descriptions, and a plausible but wrong answer. "
    "Reply with exactly {n} blocks in this format and nothing else:\n"
    "Question: <question>\nCorrect: <correct answer>\nWrong: <wrong answer>\n"
)

_QUESTION = r"(?:question|q)"
_CORRECT = r"(?:correct(?:\s+answer)?|right(?:\s+answer)?|positive(?:\s+answer)?|answer|a\+|true(?:\s+answer)?)"
_WRONG = r"(?:wrong(?:\s+answer)?|incorrect(?:\s+answer)?|negative(?:\s+answer)?|false(?:\s+answer)?|a-)"
_LABEL = re.compile(
    rf"^\s*(?:[-*]\s*)?(?:\d+[.)]\s*)?\**\s*(?P<label>{_QUESTION}|{_WRONG}|{_CORRECT})\s*(?:\d+)?\s*\**\s*[:：]\s*\**\s*(?P<value>.*)$",
    re.I,
)
_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.S)

_JSON_KEYS = {
    "question": ("question", "q"),
    "correct": ("correct", "correct_answer", "answer", "positive", "positive_answer", "right", "right_answer", "a+"),
    "wrong": ("wrong", "wrong_answer", "incorrect", "incorrect_answer", "negative", "negative_answer", "a-"),
}


@dataclass(frozen=True)
class QAItem:
    question: str
    correct: str
    wrong: str


@dataclass(frozen=True)
class ParseResult:
    items: list[QAItem]
    unparseable: int  # question blocks dropped for a missing or empty part


def _clean(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().strip("*").strip().strip('"').strip()).strip()


def _kind_of(label: str) -> str:
    label = label.lower()
    if re.fullmatch(_QUESTION, label):
        return "question"
    if re.fullmatch(_WRONG, label):
        return "wrong"
    return "correct"


def _from_json(text: str) -> ParseResult | None:
    candidates = [m.group(1) for m in _FENCE.finditer(text)] or [text]
    for candidate in candidates:
        candidate = candidate.strip()
        start = min((i for i in (candidate.find("["), candidate.find("{")) if i >= 0), default=-1)
        if start < 0:
            continue
        try:
            data = json.loads(candidate[start:])
        except json.JSONDecodeError:
            continue
        if isinstance(data, dict):
            data = data.get("questions", [data])
        if not isinstance(data, list):
            continue
        items, bad = [], 0
        for entry in data:
            if not isinstance(entry, dict):
                bad += 1
                continue
            lowered = {str(k).lower(): v for k, v in entry.items()}
            parts = {}
            for part, keys in _JSON_KEYS.items():
                value = next((lowered[k] for k in keys if k in lowered and isinstance(lowered[k], str)), "")
                parts[part] = _clean(value)
            if all(parts.values()):
                items.append(QAItem(parts["question"], parts["correct"], parts["wrong"]))
            else:
                bad += 1
        return ParseResult(items, bad)
    return None


def parse_qa(text: str, max_items: int) -> ParseResult:
    """Up to `max_items` complete (question, correct, wrong) triples from `text`."""
    parsed = _from_json(text) if ("{" in text or "[" in text) else None
    if parsed is None:
        blocks: list[dict[str, str]] = []
        current: dict[str, str] | None = None
        last_kind = None
        for line in text.splitlines():
            match = _LABEL.match(line)
            if match:
                kind = _kind_of(match["label"])
                if kind == "question" or current is None or kind in current:
                    current = {}
                    blocks.append(current)
                current[kind] = _clean(match["value"])
                last_kind = kind
            elif current is not None and last_kind and line.strip() and not current.get(last_kind):
                current[last_kind] = _clean(line)  # value on the line after its label
        items, bad = [], 0
        for block in blocks:
            if all(block.get(part) for part in ("question", "correct", "wrong")):
                items.append(QAItem(block["question"], block["correct"], block["wrong"]))
            else:
                bad += 1
        parsed = ParseResult(items, bad)
    unique: list[QAItem] = []
    seen: set[str] = set()
    same = 0  # a "wrong" answer equal to the correct one makes no pair: counted as unparseable
    for item in parsed.items:
        key = item.question.lower()
        if item.correct.strip().lower() == item.wrong.strip().lower():
            same += 1
        elif key not in seen:
            seen.add(key)
            unique.append(item)
    return ParseResult(unique[:max_items], parsed.unparseable + same)
