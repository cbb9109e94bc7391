"""ScienceQA: LLaVA's `eval_science_qa.py` parsing: the reply is a bare option letter, or starts
"X. ", or contains exactly one "The answer is X."; anything else is FAILED (wrong)."""

from __future__ import annotations

import re

SCIENCEQA_OPTIONS = ("A", "B", "C", "D", "E")
_ANSWER_IS = re.compile(r"The answer is ([A-Z]).")


def scienceqa_letter(text: str) -> str:
    """The chosen option letter, or 'FAILED' (LLaVA's eval_science_qa.py rules)."""
    if text in SCIENCEQA_OPTIONS:
        return text
    if len(text) >= 3 and text[0] in SCIENCEQA_OPTIONS and text[1:3] == ". ":
        return text[0]
    found = _ANSWER_IS.findall(text)
    return found[0] if len(found) == 1 else "FAILED"


def scienceqa_correct(reply: str, answer_index: int, n_choices: int) -> bool:
    letter = scienceqa_letter(reply)
    index = SCIENCEQA_OPTIONS.index(letter) if letter in SCIENCEQA_OPTIONS[:n_choices] else -1
    return index == answer_index
