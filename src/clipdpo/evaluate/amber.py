"""AMBER (Wang et al. 2023) metrics, reimplemented to give exactly the official `inference.py` numbers.

Inputs are the benchmark's own files in the official layout, from a folder or S3 prefix:
`annotations.json` (item i has id i+1), `relation.json` (word -> associated words),
`safe_words.txt`, `metrics.txt` (the counters' start values: the official file starts every
denominator at 0.001, which shows in the last digit). Responses are the official
`[{"id": ..., "response": ...}]`. A generative item may carry several responses (sampled decoding):
each counts as one description, so CHAIR is over all their nouns, Cover over all their truth words, Hal
over all descriptions; with one response per item this is exactly the official computation.

Generative (CHAIR, Cover, Hal, Cog): nouns of the response (tokenise, POS-tag, keep NN*,
lemmatise) that are in AMBER's vocabulary; a noun in the global safe words is skipped but still
counted in CHAIR's denominator; a noun equal to, or similar (> threshold, word vectors) to, a
truth word or its associations covers that truth word; otherwise it is a hallucination, and if
it matches a "hallu" word (or its associations) it also counts for Cog. Discriminative: the
answer must be exactly "Yes" or "No"; "No" is the positive class for P/R/F1 (the reverse of
POPE); per type: existence, attribute (state, number, action), relation. The official F1 adds
0.0001 to the denominator (0.001 for existence) and uses the rounded P and R; kept. AMBER score
= (100 - CHAIR + F1) / 2, as the paper's Table 2 (the official code does not compute it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Mapping, Protocol

from clipdpo.errors import UserError
from clipdpo.storage import NotFound, Storage, join

TYPES = {
    "discriminative-attribute-state": "as",
    "discriminative-attribute-number": "an",
    "discriminative-attribute-action": "aa",
    "discriminative-hallucination": "ha",  # existence
}
RELATION_PREFIX = "asso"  # every other discriminative type
EVALUATION_TYPES = ("a", "g", "d", "de", "da", "dr")


class AmberInputError(ValueError, UserError):
    """A benchmark file or a response file is not in the expected layout."""


class NounSimilarity(Protocol):
    """The NLP the official code uses: nltk tokeniser + POS tagger + WordNet lemmatiser, spaCy vectors."""

    description: str

    def nouns(self, text: str) -> list[str]: ...

    def similarity(self, word1: str, word2: str) -> float: ...


@dataclass
class AmberData:
    annotations: list[dict]
    association: dict[str, list[str]]
    global_safe_words: list[str]
    counters: dict[str, float]
    hallucination_words: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        words = set(self.association)
        for associated in self.association.values():
            words.update(associated)
        self.hallucination_words = words


COUNTER_NAMES = [
    "chair_num",
    "chair_score",
    "safe_cover_num",
    "safe_cover_score",
    "hallu_cover_num",
    "hallu_cover_score",
    "non_hallu_score",
    "non_hallu_num",
    "qa_correct_score",
    "qa_correct_num",
    "qa_no_score",
    "qa_no_num",
    "qa_ans_no_score",
    "qa_ans_no_num",
]


def start_counters_text() -> str:
    """A metrics.txt as the official one: every counter, scores from 0, denominators from 0.001."""
    discriminative = COUNTER_NAMES[8:]
    names = COUNTER_NAMES + [f"{p}_{c}" for p in ("as", "an", "aa", "ha", RELATION_PREFIX) for c in discriminative]
    return "\n".join(f"{n}=0" if n.endswith("score") else f"{n}=0.001" for n in names)


def parse_counters(text: str, where: str) -> dict[str, float]:
    """metrics.txt: `name=value` per line (the official code eval()s the value; numbers only here)."""
    counters = {}
    for number, line in enumerate(text.splitlines(), 1):
        parts = line.strip().split("=")
        if len(parts) != 2:
            continue
        try:
            counters[parts[0].strip()] = float(parts[1].strip())
        except ValueError:
            raise AmberInputError(f"{where}:{number}: {parts[1].strip()!r} is not a number") from None
    return counters


def load(root: str, storage: Storage | None = None) -> AmberData:
    """Read the official files under `root` (folder or s3:// prefix), checking their layout."""
    storage = storage or Storage()

    def read(name: str) -> str:
        try:
            return storage.read_bytes(join(root, name)).decode("utf-8")
        except NotFound:
            raise AmberInputError(
                f"{join(root, name)}: missing (AMBER's official data/ layout expected: "
                "annotations.json, relation.json, safe_words.txt, metrics.txt)"
            ) from None

    where = join(root, "annotations.json")
    try:
        annotations = json.loads(read("annotations.json"))
        association = json.loads(read("relation.json"))
    except json.JSONDecodeError as err:
        raise AmberInputError(f"{root}: not valid JSON ({err})") from err
    if not isinstance(annotations, list):
        raise AmberInputError(f"{where}: expected a list of items, got {type(annotations).__name__}")
    for index, item in enumerate(annotations):
        if not isinstance(item, dict) or not {"id", "type", "truth"} <= set(item):
            raise AmberInputError(f"{where}: item {index} lacks id/type/truth (official layout expected)")
        if item["id"] != index + 1:
            raise AmberInputError(
                f"{where}: item {index} has id {item['id']}, expected {index + 1} "
                "(ids are positions, as the official code indexes them)"
            )
        if item["type"] == "generative" and "hallu" not in item:
            raise AmberInputError(f"{where}: generative item {item['id']} lacks 'hallu'")
    if not isinstance(association, dict):
        raise AmberInputError(f"{join(root, 'relation.json')}: expected an object word -> [words]")
    safe_words = [line.split("\n")[0] for line in read("safe_words.txt").splitlines()]
    counters = parse_counters(read("metrics.txt"), join(root, "metrics.txt"))
    return AmberData(annotations, association, safe_words, counters)


@dataclass
class GenerativeResult:
    nouns: list[str]  # vocabulary nouns considered
    hallucinated: list[str]
    covered_truth: list[str]
    covered_hallu: list[str]
    n_truth: int
    n_hallu: int


def _expanded(words: list[str], association: dict[str, list[str]], item_id: int) -> list[tuple[str, int]]:
    """(word, index of the annotated word it stands for): associations first, then the words themselves,
    in the official order (first match wins)."""
    pairs: list[tuple[str, int]] = []
    for index, word in enumerate(words):
        if word not in association:
            raise AmberInputError(f"annotation {item_id}: word {word!r} is not in relation.json")
        pairs.extend((associated, index) for associated in association[word])
    pairs.extend((word, index) for index, word in enumerate(words))
    return pairs


def score_generative(
    item: dict,
    response: str,
    data: AmberData,
    nlp: NounSimilarity,
    threshold: float = 0.8,
    nouns: list[str] | None = None,
) -> GenerativeResult:
    """`nouns`: the response's nouns when already extracted (a batched pass), else nlp.nouns(response)."""
    nouns = [noun for noun in (nlp.nouns(response) if nouns is None else nouns) if noun in data.hallucination_words]
    safe = _expanded(item["truth"], data.association, item["id"])
    hallu = _expanded(item["hallu"], data.association, item["id"])
    safe_covered = [False] * len(item["truth"])
    hallu_covered = [False] * len(item["hallu"])
    hallucinated = []
    global_safe = set(data.global_safe_words)

    def first_match(noun, pairs, test):
        return next((index for word, index in pairs if test(noun, word)), None)

    equal = lambda a, b: a == b  # noqa: E731
    similar = lambda a, b: nlp.similarity(a, b) > threshold  # noqa: E731
    for noun in nouns:
        if noun in global_safe:
            continue
        index = first_match(noun, safe, equal)
        if index is not None:
            safe_covered[index] = True
            continue
        index = first_match(noun, hallu, equal)
        if index is not None:
            hallu_covered[index] = True
        index = first_match(noun, hallu, similar)
        if index is not None:
            hallu_covered[index] = True
        index = first_match(noun, safe, similar)
        if index is not None:
            safe_covered[index] = True
            continue
        hallucinated.append(noun)
    return GenerativeResult(
        nouns,
        hallucinated,
        [w for w, c in zip(item["truth"], safe_covered) if c],
        [w for w, c in zip(item["hallu"], hallu_covered) if c],
        len(item["truth"]),
        len(item["hallu"]),
    )


def _type_prefix(item_type: str) -> str:
    return TYPES.get(item_type, RELATION_PREFIX)


def _check_responses(
    data: AmberData,
    responses: Mapping[int, str | list[str]],
    expected: set[int],
    evaluation_type: str,
    allow_partial: bool,
) -> list[int]:
    """The expected ids with no response; unknown ids, and missing ones unless allowed, are errors."""
    unknown = sorted(set(responses) - {item["id"] for item in data.annotations})
    if unknown:
        raise AmberInputError(f"responses: ids not in annotations.json: {unknown[:10]}")
    missing = sorted(expected - set(responses))
    if missing and not allow_partial:
        raise AmberInputError(
            f"responses: {len(missing)} id(s) of evaluation type {evaluation_type!r} have no "
            f"response (e.g. {missing[:10]}); pass allow_partial to score the rest"
        )
    return missing


def _count_generative(m: dict, result: GenerativeResult) -> None:
    m["chair_score"] += len(result.hallucinated)
    m["chair_num"] += len(result.nouns)  # global safe words included, as the official code
    m["safe_cover_score"] += len(result.covered_truth)
    m["safe_cover_num"] += result.n_truth
    m["hallu_cover_score"] += len(result.covered_hallu)
    m["hallu_cover_num"] += result.n_hallu
    m["non_hallu_score"] += 1 if not result.hallucinated else 0
    m["non_hallu_num"] += 1


def _count_discriminative(m: dict, item: dict, response: str) -> None:
    prefix = _type_prefix(item["type"]) + "_"

    def bump(key: str) -> None:  # the overall counter and the item type's own
        for name in (key, prefix + key):
            m[name] = m.get(name, 0.0) + 1

    truth = item["truth"]
    bump("qa_correct_num")
    if truth == "yes":
        if response == "Yes":
            bump("qa_correct_score")
    else:
        bump("qa_no_num")
        if response == "No":
            bump("qa_correct_score")
            bump("qa_no_score")
    if response == "No":
        bump("qa_ans_no_num")
        if truth == "no":
            bump("qa_ans_no_score")


@dataclass(frozen=True)
class EvaluateOptions:
    """What evaluate() accepts and returns beside AMBER's own arguments. `allow_partial`: score the responses
    given, missing ids allowed. `examples`: the first generative items by id with their first text. `per_item`:
    the result also holds "per_item", each scored item's own HEADLINE_COUNTERS (all its samples together), whose
    sums plus the start counters give the headline numbers (`headline`): what a bootstrap over images resamples."""

    allow_partial: bool = False
    examples: int = 0
    per_item: bool = False


def evaluate(
    data: AmberData,
    responses: dict[int, str | list[str]],
    nlp: NounSimilarity | None,
    *,
    evaluation_type: str = "a",
    threshold: float = 0.8,
    options: EvaluateOptions = EvaluateOptions(),
) -> dict:
    """All AMBER metrics for `responses` (id -> text, or a generative item's sampled texts); refuses missing
    ids unless `options.allow_partial` (see EvaluateOptions for the examples and per-item counts)."""
    if evaluation_type not in EVALUATION_TYPES:
        raise AmberInputError(f"evaluation_type {evaluation_type!r}; expected one of {EVALUATION_TYPES}")
    wants_generative = evaluation_type in ("a", "g")
    expected = wanted_ids(data, evaluation_type)
    missing = _check_responses(data, responses, expected, evaluation_type, options.allow_partial)
    if wants_generative and nlp is None:
        raise AmberInputError("generative AMBER needs the NLP resources (tokeniser, tagger, WordNet, vectors)")
    m = dict(data.counters)
    for key in (
        "chair_score",
        "chair_num",
        "safe_cover_score",
        "safe_cover_num",
        "hallu_cover_score",
        "hallu_cover_num",
        "non_hallu_score",
        "non_hallu_num",
    ):
        m.setdefault(key, 0.0)
    scored = sorted(set(responses) & expected)
    items, qualitative = _count_items(data, responses, scored, nlp, threshold, options.examples, wants_generative)
    totals: dict[str, float] = {}
    for own in items.values():
        for key, value in own.items():
            totals[key] = totals.get(key, 0.0) + value
    for key, value in totals.items():  # counts summed first, then onto the start values, as `headline` does
        m[key] = m.get(key, 0.0) + value
    out = _summarise(m, evaluation_type, complete=not missing, missing=missing, qualitative=qualitative)
    if options.per_item:
        out["per_item"] = {item_id: {k: own[k] for k in HEADLINE_COUNTERS} for item_id, own in items.items()}
    return out


def _count_items(
    data: AmberData,
    responses: dict[int, str | list[str]],
    scored: list[int],
    nlp: NounSimilarity | None,
    threshold: float,
    examples: int,
    wants_generative: bool,
) -> tuple[dict[int, dict[str, float]], list[dict]]:
    """Each scored item's own HEADLINE_COUNTERS (a generative item's samples together), and the qualitative
    examples: the first `examples` generative items by id, their first text."""
    texts = {i: _texts(responses[i], i) for i in scored if is_generative(data, i)}
    batched = _batched_nouns(texts, nlp) if wants_generative else {}
    items: dict[int, dict[str, float]] = {}
    qualitative: list[dict] = []
    for item_id in scored:
        item = data.annotations[item_id - 1]
        own = items[item_id] = dict.fromkeys(HEADLINE_COUNTERS, 0.0)
        if item["type"] != "generative":
            _count_discriminative(own, item, _single_text(responses[item_id], item_id))
            continue
        if nlp is None:  # only generative items need it; evaluation type "d" scores none
            raise AmberInputError("generative AMBER needs the NLP resources (tokeniser, tagger, WordNet, vectors)")
        for k, response in enumerate(texts[item_id]):
            result = score_generative(item, response, data, nlp, threshold, batched.get((item_id, k)))
            _count_generative(own, result)
            if k == 0 and len(qualitative) < examples:  # the first items by id: the same ones for every model
                qualitative.append({"id": item_id, "response": response, "hallucinated": result.hallucinated})
    return items, qualitative


def _single_text(response: str | list[str], item_id: int) -> str:
    """A discriminative item's one answer (its task never samples: a list of samples is no yes/no answer)."""
    if not isinstance(response, str):
        raise AmberInputError(
            f"responses: discriminative item {item_id}: expected one text, got {type(response).__name__}"
        )
    return response


def _texts(response: str | list[str], item_id: int) -> list[str]:
    """A generative item's descriptions: one response, or its samples."""
    if isinstance(response, str):
        return [response]
    if not response or not all(isinstance(text, str) for text in response):
        raise AmberInputError(f"responses: item {item_id}: expected a text or a non-empty list of texts")
    return list(response)


def _batched_nouns(texts: dict[int, list[str]], nlp) -> dict[tuple[int, int], list[str]]:
    """(item id, sample) -> nouns, in one batched NLP pass when the NLP has one (else scored one by one)."""
    if not hasattr(nlp, "nouns_many"):
        return {}
    keys = [(i, k) for i, samples in texts.items() for k in range(len(samples))]
    return dict(zip(keys, nlp.nouns_many([texts[i][k] for i, k in keys])))


# The counters the headline numbers (CHAIR, Cover, Hal, Cog, F1, AMBER score) are computed from.
HEADLINE_COUNTERS = (
    "chair_score",
    "chair_num",
    "safe_cover_score",
    "safe_cover_num",
    "hallu_cover_score",
    "hallu_cover_num",
    "non_hallu_score",
    "non_hallu_num",
    "qa_correct_score",
    "qa_correct_num",
    "qa_no_score",
    "qa_no_num",
    "qa_ans_no_score",
    "qa_ans_no_num",
)


def headline(m: dict) -> dict[str, float | None]:
    """The headline numbers from counters (start values included), exactly as the full result computes them."""
    generative = _generative(m)
    f1 = _prf(m, [""], 0.0001)["f1"]
    chair = generative["chair"]
    score = None if chair is None or f1 is None else round(amber_score(chair, f1), 2)
    return {**{f"generative.{k}": v for k, v in generative.items()}, "discriminative.f1": f1, "amber_score": score}


def _generative(m: dict) -> dict[str, float | None]:
    return {
        "chair": _pct(m["chair_score"], m["chair_num"]),
        "cover": _pct(m["safe_cover_score"], m["safe_cover_num"]),
        "hal": round(100 - m["non_hallu_score"] / m["non_hallu_num"] * 100, 1) if m["non_hallu_num"] else None,
        "cog": _pct(m["hallu_cover_score"], m["hallu_cover_num"]),
    }


def _pct(score: float, num: float) -> float | None:
    """None when nothing was counted (a metrics.txt without that counter and no item of its type)."""
    return round(score / num * 100, 1) if num else None


def _prf(m: dict, prefixes: list[str], epsilon: float) -> dict:
    get = lambda key: sum(m.get(f"{p}{key}", 0.0) for p in prefixes)  # noqa: E731
    accuracy = _pct(get("qa_correct_score"), get("qa_correct_num"))
    precision = _pct(get("qa_ans_no_score"), get("qa_ans_no_num"))
    recall = _pct(get("qa_no_score"), get("qa_no_num"))
    f1 = None
    if precision is not None and recall is not None:
        f1 = round(2 * (precision / 100) * (recall / 100) / ((precision / 100) + (recall / 100) + epsilon) * 100, 1)
    return {"accuracy": accuracy, "precision": precision, "recall": recall, "f1": f1}


def _summarise(m: dict, evaluation_type: str, *, complete: bool, missing: list[int], qualitative: list) -> dict:
    out: dict = {"evaluation_type": evaluation_type, "complete": complete, "missing_ids": missing[:100], "counters": m}
    if evaluation_type in ("a", "g"):
        out["generative"] = _generative(m)
        out["examples"] = qualitative
    if evaluation_type in ("a", "d"):
        out["discriminative"] = _prf(m, [""], 0.0001)
    if evaluation_type in ("a", "d", "de"):
        out["existence"] = _prf(m, ["ha_"], 0.001)
    if evaluation_type in ("a", "d", "da"):
        out["attribute"] = _prf(m, ["as_", "an_", "aa_"], 0.0001)
        out["state"] = _prf(m, ["as_"], 0.0001)
        out["number"] = _prf(m, ["an_"], 0.0001)
        out["action"] = _prf(m, ["aa_"], 0.0001)
    if evaluation_type in ("a", "d", "dr"):
        out["relation"] = _prf(m, ["asso_"], 0.0001)
    if (
        "generative" in out
        and "discriminative" in out
        and None not in (out["generative"]["chair"], out["discriminative"]["f1"])
    ):
        out["amber_score"] = round(amber_score(out["generative"]["chair"], out["discriminative"]["f1"]), 2)
    return out


def amber_score(chair: float, f1: float) -> float:
    return (100 - chair + f1) / 2


def load_queries(text: str, where: str, data: AmberData) -> list[dict]:
    """The official query file: [{"id", "image", "query"}], ids from annotations.json."""
    try:
        queries = json.loads(text)
    except json.JSONDecodeError as err:
        raise AmberInputError(f"{where}: not valid JSON ({err})") from err
    if not isinstance(queries, list):
        raise AmberInputError(f'{where}: expected [{{"id": int, "image": str, "query": str}}, ...]')
    for index, query in enumerate(queries):
        if not isinstance(query, dict) or not {"id", "image", "query"} <= set(query):
            raise AmberInputError(f"{where}: entry {index} lacks id/image/query (official layout expected)")
        if not isinstance(query["id"], int) or not 1 <= query["id"] <= len(data.annotations):
            raise AmberInputError(f"{where}: entry {index} has id {query['id']!r}, not an id of annotations.json")
    return queries


def is_generative(data: AmberData, item_id: int) -> bool:
    return data.annotations[item_id - 1]["type"] == "generative"


def wanted_ids(data: AmberData, evaluation_type: str) -> set[int]:
    """The annotation ids an evaluation type scores (the same selection `evaluate` applies)."""
    groups = {"de": {"ha"}, "da": {"as", "an", "aa"}, "dr": {RELATION_PREFIX}}
    out = set()
    for item in data.annotations:
        kind = item["type"]
        if evaluation_type in ("a", "g"):
            keep = evaluation_type == "a" or kind == "generative"
        elif kind == "generative":
            keep = False
        else:
            keep = evaluation_type == "d" or _type_prefix(kind) in groups[evaluation_type]
        if keep:
            out.add(item["id"])
    return out
