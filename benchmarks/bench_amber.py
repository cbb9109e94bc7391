"""make bench (AMBER part): scoring throughput of the AMBER generative evaluator, model inference excluded.

1,000 synthetic descriptions (about 40 words, 6-8 AMBER-vocabulary nouns each, some hallucinated)
over a synthetic benchmark in the official layout, scored with the real spaCy model `make` fetched
(en_core_web_md; CLIPDPO_SPACY_MODEL names another). Reports seconds per 1,000 responses for
(a) the whole evaluator: noun extraction (spaCy tagger + lemmatizer, batched) + matching + vectors, and
(b) the matching alone (nouns given), the part that is AMBER's own algorithm.
Target: well under a second per 1,000 for the scoring. Results: bench-results/amber.json.
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

from clipdpo.evaluate import amber
from clipdpo.evaluate.nlp import SpacyNLP

ROOT = Path(__file__).resolve().parent.parent
NOUNS = (
    "dog cat car tree grass man woman child table chair cup bottle bench umbrella bicycle horse bird sky "
    "cloud road building window door street boat water beach sand mountain flower plate pizza phone "
    "laptop book bag shoe hat shirt fence train bus truck sign light clock kite ball frisbee"
).split()
TEMPLATES = [
    "In the picture there is a {} next to a {}, while a {} stands near the {}.",
    "A {} and a {} can be seen under the {}; behind them a {} is visible.",
    "The image shows several {}s beside a {} and a {} on a sunny day with a {}.",
]


def synthetic(n: int, seed: int = 0):
    rng = random.Random(seed)
    relation = {noun: [] for noun in NOUNS}
    annotations, responses = [], {}
    for item_id in range(1, n + 1):
        truth = rng.sample(NOUNS, 5)
        hallu = rng.sample([w for w in NOUNS if w not in truth], 4)
        annotations.append({"id": item_id, "type": "generative", "truth": truth, "hallu": hallu})
        words = rng.sample(truth, 3) + rng.sample(NOUNS, 5)
        responses[item_id] = " ".join(t.format(*words[k : k + 4]) for k, t in zip((0, 4), rng.sample(TEMPLATES, 2)))
    data = amber.AmberData(annotations, relation, ["sky"], {})
    return data, responses


class GivenNouns:
    """The nouns already extracted (by the real model, once), so that only the matching is timed."""

    def __init__(self, nlp: SpacyNLP, responses: dict[int, str]):
        self.description, self.similarity = "given nouns", nlp.similarity
        self.table = dict(zip(responses.values(), nlp.nouns_many(list(responses.values()))))

    def nouns(self, text):
        return self.table[text]


def timed(fn, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> int:
    model = os.environ.get("CLIPDPO_SPACY_MODEL", str(ROOT / ".cache/nlp/en_core_web_md"))
    data, responses = synthetic(1000)
    nlp = SpacyNLP(model)
    nlp.nouns_many(["warm-up sentence with a dog."])
    given = GivenNouns(nlp, responses)
    full = timed(lambda: amber.evaluate(data, responses, nlp, evaluation_type="g"), repeats=2)
    matching = timed(lambda: amber.evaluate(data, responses, given, evaluation_type="g"))
    result = amber.evaluate(data, responses, nlp, evaluation_type="g")["generative"]
    words = sum(len(r.split()) for r in responses.values()) / len(responses)
    out = {
        "responses": len(responses),
        "mean_words": round(words, 1),
        "nlp": nlp.description,
        "seconds_per_1000_full": round(full * 1000 / len(responses), 3),
        "seconds_per_1000_matching": round(matching * 1000 / len(responses), 3),
        "metrics": result,
        "target_seconds_per_1000": 1.0,
    }
    print(json.dumps(out, indent=2))
    (ROOT / "bench-results").mkdir(exist_ok=True)
    (ROOT / "bench-results" / "amber.json").write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
