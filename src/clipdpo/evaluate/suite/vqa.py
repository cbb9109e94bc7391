"""Answer normalisation and accuracy of the open-ended LLaVA-suite benchmarks (TextVQA, GQA).

TextVQA: the EvalAI answer processor (lower-case; drop ',' and '?'; split "'s"; the VQA
punctuation rule; number words to digits; drop articles; restore contractions) on the prediction
and on each of the 10 human answers, then the VQA accuracy: for each human answer, min(1, matches
among the other nine / 3), averaged over the ten (LLaVA's m4c TextVQA evaluator).
GQA: LLaVA's conversion (strip trailing '.', lower-case) then exact match with the gold answer.

The rules keep the official code's quirks on purpose, e.g. the period rule's lookbehind typo
(`(?!<=\\d)`: a '.' after a digit is stripped unless a digit follows) and its count of 32.
"""

from __future__ import annotations

import re
from collections import Counter

_PUNCTUATION = (
    ";",
    "/",
    "[",
    "]",
    '"',
    "{",
    "}",
    "(",
    ")",
    "=",
    "+",
    "\\",
    "_",
    "-",
    ">",
    "<",
    "@",
    "`",
    ",",
    "?",
    "!",
)
_COMMA_BETWEEN_DIGITS = re.compile(r"(\d)(,)(\d)")
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")
_PERIOD_COUNT = 32  # the official code passes re.UNICODE (32) where sub() takes its count
_NUMBERS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
_ARTICLES = {"a", "an", "the"}

# English contractions: the official table maps each one written without its apostrophes (and, for the
# double ones, with either apostrophe missing) back to this form. Derived here rather than copied; forms
# that are words of their own (its, ill, well, were, hell, shell, wed, id) are not in it, as officially.
_CONTRACTED = (
    "ain't",
    "aren't",
    "can't",
    "could've",
    "couldn't",
    "couldn't've",
    "didn't",
    "doesn't",
    "don't",
    "hadn't",
    "hadn't've",
    "hasn't",
    "haven't",
    "he'd",
    "he'd've",
    "he's",
    "how'd",
    "how'll",
    "how's",
    "i'd've",
    "i'm",
    "i've",
    "isn't",
    "it'd",
    "it'd've",
    "it'll",
    "let's",
    "ma'am",
    "mightn't",
    "mightn't've",
    "might've",
    "mustn't",
    "must've",
    "needn't",
    "not've",
    "o'clock",
    "oughtn't",
    "shan't",
    "she'd've",
    "she's",
    "should've",
    "shouldn't",
    "shouldn't've",
    "somebody'd",
    "somebody'd've",
    "somebody'll",
    "somebody's",
    "someone'd",
    "someone'd've",
    "someone'll",
    "someone's",
    "something'd",
    "something'd've",
    "something'll",
    "that's",
    "there'd",
    "there'd've",
    "there're",
    "there's",
    "they'd",
    "they'd've",
    "they'll",
    "they're",
    "they've",
    "'twas",
    "wasn't",
    "we'd've",
    "we've",
    "weren't",
    "what'll",
    "what're",
    "what's",
    "what've",
    "when's",
    "where'd",
    "where's",
    "where've",
    "who'd",
    "who'd've",
    "who'll",
    "who're",
    "who's",
    "who've",
    "why'll",
    "why're",
    "why's",
    "won't",
    "would've",
    "wouldn't",
    "wouldn't've",
    "y'all",
    "y'all'll",
    "y'all'd've",
    "you'd",
    "you'd've",
    "you'll",
    "you're",
    "you've",
)


def _contraction_table() -> dict[str, str]:
    table: dict[str, str] = {}
    for word in _CONTRACTED:
        parts = word.split("'")
        table["".join(parts)] = word
        for gap in range(1, len(parts)):  # one apostrophe kept, the others dropped
            if len(parts) > 2:
                table["".join(parts[:gap]) + "'" + "".join(parts[gap:])] = word
    return table


CONTRACTIONS = _contraction_table()


def process_punctuation(text: str) -> str:
    out = text
    strip_all = _COMMA_BETWEEN_DIGITS.search(text) is not None
    for mark in _PUNCTUATION:
        if strip_all or mark + " " in text or " " + mark in text:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return _PERIOD.sub("", out, _PERIOD_COUNT)


def process_digit_article(text: str) -> str:
    words = [_NUMBERS.get(word, word) for word in text.lower().split()]
    words = [word for word in words if word not in _ARTICLES]
    return " ".join(CONTRACTIONS.get(word, word) for word in words)


def normalize_vqa_answer(text: str) -> str:
    """EvalAI's answer processor, as LLaVA's TextVQA evaluation applies it to both sides."""
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return process_digit_article(process_punctuation(text))


def vqa_accuracy(prediction: str, human_answers: list[str]) -> float:
    """VQA accuracy of one prediction against the human answers (10 in TextVQA)."""
    if not human_answers:
        raise ValueError("VQA accuracy needs at least one human answer")
    predicted = normalize_vqa_answer(prediction)
    answers = [normalize_vqa_answer(answer) for answer in human_answers]
    counts = Counter(answers)
    # leave-one-out over the annotators: an annotator whose answer equals the prediction is the one left out
    scores = [min(1.0, (counts[predicted] - (answer == predicted)) / 3) for answer in answers]
    return sum(scores) / len(scores)


def gqa_prediction(text: str) -> str:
    return text.rstrip(".").lower()


def gqa_correct(prediction: str, answer: str) -> bool:
    return gqa_prediction(prediction) == answer
