"""Turn a question and an answer into a short description CLIP can score (Sec. 4.2, Fig. 6).

"What is the man holding?" + "a frisbee"  ->  "the man holding a frisbee"
"Is there a dog on the sofa?" + "no"      ->  "there is no dog on the sofa"

A table of (pattern, builder) tried in order; the first match wins. The fallback keeps the
question's words and appends the answer, so every row gets a check caption.
"""

from __future__ import annotations

import re
from typing import Callable

_YES = re.compile(r"^\s*(yes|yeah|yep|correct|true)\b", re.I)
_NO = re.compile(r"^\s*(no|nope|not|false|incorrect)\b", re.I)


def yes_no(answer: str) -> bool | None:
    """True/False for yes/no answers ("Yes, it is." counts), None otherwise."""
    if _YES.match(answer):
        return True
    if _NO.match(answer):
        return False
    return None


def _clean_answer(answer: str) -> str:
    return answer.strip().rstrip(".!").strip()


Builder = Callable[[re.Match, str], str | None]


def _there(match: re.Match, answer: str) -> str | None:
    verdict = yes_no(answer)
    if verdict is None:
        return None
    verb, rest = match["verb"].lower(), match["rest"]
    if verdict:
        return f"there {verb} {rest}"
    rest_no_article = re.sub(r"^(a|an|any|some)\s+", "", rest, flags=re.I)
    return f"there {verb} no {rest_no_article}"


def _is_subject_predicate(match: re.Match, answer: str) -> str | None:
    verdict = yes_no(answer)
    if verdict is None:
        return None
    verb = match["verb"].lower()
    words = match["rest"].split()
    # Split "the dog sleeping on the sofa" into subject "the dog" and the rest after it.
    if len(words) >= 3 and words[0].lower() in ("the", "a", "an", "this", "that", "these", "those"):
        subject, predicate = " ".join(words[:2]), " ".join(words[2:])
    elif len(words) >= 2:
        subject, predicate = words[0], " ".join(words[1:])
    else:
        return None
    return f"{subject} {verb} {predicate}" if verdict else f"{subject} {verb} not {predicate}"


RULES: list[tuple[re.Pattern, Builder]] = [
    (
        re.compile(r"^what colou?r (?:is|are) (?P<subject>.+)$", re.I),
        lambda m, a: f"{m['subject']} is {_clean_answer(a)}",
    ),
    (re.compile(r"^what (?:is|are) (?P<subject>.+?) doing$", re.I), lambda m, a: f"{m['subject']} {_clean_answer(a)}"),
    (
        re.compile(r"^how many (?P<things>.+?) (?:are there|can be seen|are visible|are)(?P<rest>.*)$", re.I),
        lambda m, a: f"{_clean_answer(a)} {m['things']}{m['rest']}",
    ),
    (re.compile(r"^(?P<verb>is|are) there (?P<rest>.+)$", re.I), _there),
    (re.compile(r"^where (?:is|are) (?P<subject>.+)$", re.I), lambda m, a: f"{m['subject']} {_clean_answer(a)}"),
    (
        re.compile(r"^what (?:kind|type|sort) of (?P<thing>\w+) (?:is|are) (?P<rest>.+)$", re.I),
        lambda m, a: f"{_clean_answer(a)} {m['thing']} {m['rest']}",
    ),
    (re.compile(r"^who (?:is|are) (?P<rest>.+)$", re.I), lambda m, a: f"{_clean_answer(a)} {m['rest']}"),
    (
        re.compile(r"^what (?:is|are) (?P<rest>(?:the|a|an|this|these) .+)$", re.I),
        lambda m, a: f"{m['rest']} {_clean_answer(a)}",
    ),
    (re.compile(r"^(?P<verb>is|are) (?P<rest>.+)$", re.I), _is_subject_predicate),
]


def question_to_caption(question: str, answer: str) -> str:
    """The check caption for (question, answer)."""
    text = re.sub(r"\s+", " ", question.strip()).rstrip("?").strip()
    for pattern, build in RULES:
        match = pattern.match(text)
        if match:
            built = build(match, answer)
            if built:
                return re.sub(r"\s+", " ", built).strip()
    return f"{text} {_clean_answer(answer)}".strip()
