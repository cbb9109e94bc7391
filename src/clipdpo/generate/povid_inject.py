"""POVID's hallucination injection (paper Sec. 3.1, Appendix A.2 Table 6): the prompts, and the parsing and
validation of an LLM's rewritten answers. Pure: no model here (the generate stage's engines run the prompts).

Two prompts, verbatim from Table 6: `caption` (detailed descriptions: absent co-occurring objects, wrong
counts or relations, wrong attributes) and `reasoning` (short answers get a hallucinated answer; reasoning
answers are reorganised as "Reason: ..., Result: ..." (Answer 1) and a corrupted copy (Answer 2)).
The reply must carry "Answer:" (or "Answer 2:" for reasoning); an injected answer is dropped, with its
reason counted, when it is missing, empty, the original again (up to case, spacing and punctuation), or,
given a `visible` function (what the scorer extracts, e.g. the object/attribute set), changes nothing
visible.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterable

CAPTION_PROMPT = (
    "Help me generate one highly confusing response based on the image and the standard caption in the "
    "Question-Answer Pair.\n\nQuestion-answer Pair:\n\nQ: {question}\n\nA: {answer}\n\nRequirements:\n\n"
    "(1) The generated caption is generally similar to the given A, with the same main meaning; (2) You can refer "
    "to the following errors to generate the wrong caption (1. The wrong caption can contain some co-occurring "
    "objects, which are prone to appear in such scenarios but do not appear in the image; 2. The wrong caption can "
    "be an error in the number of entities or the logical relationships between entities; 3. The attributes of "
    "entities in the caption can also be modified, such as color, appearance, etc.) (3) Compared to the original "
    "caption A, the caption you modified is incorrect based on the provided image.\n\nOutput Format:\n\n"
    "Answer: your answer"
)
REASONING_PROMPT = (
    "Now, please help me generate new answers with hallucination errors based on the image, question, and answer "
    "provided. There are two cases now:\n\n1. If the given question and answer are short and do not require "
    "logical reasoning, then modify the answer to a hallucination error answer, such as some quantity errors or "
    "entity and property errors.\n\n2. If the entire question requires logical reasoning, then help me reorganize "
    'the answers based on the given image, questions, and answers into the format "Reason: xxx, Result: xxx" '
    "(Answer 1). Modify the reasons by introducing errors related to logical relationships, entity information, "
    "entity attributes, etc. If the error in the reason would lead to a new result, modify the result "
    "accordingly. If the error does not lead to a new result, keep the original result. Similarly, organize it in "
    'the format "Reason: xxx, Result: xxx" (Answer 2).\n\nQuestion-answer Pair:\n\nQ: {question}\n\n'
    "A: {answer}\n\nRequirements:\n\n(1) The generated wrong answer and reasoning process should be combined with "
    "the image and be misleading..\n\nOutput Format:\n\nAnswer: your answer"
)
PROMPTS = {"caption": CAPTION_PROMPT, "reasoning": REASONING_PROMPT}
DROP_REASONS = ("no_answer", "empty", "identical", "no_visible_change")

# "Answer:", "**Answer 2:**", "Answer (2):" at a line start or after a sentence; group 1 = the answer's number
_ANSWER = re.compile(r"(?:^|\n)\s*\**\s*answer\s*\(?\s*(\d?)\s*\)?\s*\**\s*[:：]\s*\**", re.I)


def injection_prompt(kind: str, question: str, answer: str) -> str:
    if kind not in PROMPTS:
        raise ValueError(f"injection kind {kind!r}; expected one of {sorted(PROMPTS)}")
    if not answer.strip():
        raise ValueError("the ground-truth answer to inject hallucinations into is empty")
    return PROMPTS[kind].format(question=question.strip(), answer=answer.strip())


def extract_answer(reply: str) -> str | None:
    """The injected answer: the text after "Answer 2:" when the reply numbers its answers (the reasoning
    prompt's corrupted copy), else after the first "Answer:"; None without any."""
    marks = list(_ANSWER.finditer(reply))
    if not marks:
        return None
    chosen = next((m for m in marks if m.group(1) == "2"), marks[0])
    following = [m.start() for m in marks if m.start() > chosen.start()]
    text = reply[chosen.end() : following[0] if following else len(reply)]
    return re.sub(r"\s+", " ", text).strip().strip("*").strip().strip('"').strip()


def normalised(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


@dataclass
class InjectionCounts:
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)  # reason -> count

    def as_dict(self) -> dict:
        return {"kept": self.kept, **{f"dropped_{r}": self.dropped[r] for r in DROP_REASONS}}


def validate(reply: str, original: str, visible: Callable[[str], Iterable] | None = None) -> tuple[str | None, str]:
    """(injected answer, "kept") or (None, drop reason)."""
    injected = extract_answer(reply)
    if injected is None:
        return None, "no_answer"
    if not injected:
        return None, "empty"
    if normalised(injected) == normalised(original):
        return None, "identical"
    if visible is not None and set(visible(injected)) == set(visible(original)):
        return None, "no_visible_change"
    return injected, "kept"


def validate_all(
    replies: list[str], originals: list[str], visible: Callable[[str], Iterable] | None = None
) -> tuple[list[str | None], InjectionCounts]:
    """Each reply's injected answer (None where dropped) and the counts."""
    if len(replies) != len(originals):
        raise ValueError(f"{len(replies)} replies for {len(originals)} original answers")
    counts, out = InjectionCounts(), []
    for reply, original in zip(replies, originals):
        injected, reason = validate(reply, original, visible)
        out.append(injected)
        if injected is None:
            counts.dropped[reason] += 1
        else:
            counts.kept += 1
    return out, counts
