"""The LLaVA benchmark suite (Table 4): reading each benchmark's questions and scoring the replies.

Every benchmark is one `questions.jsonl` (clipdpo's benchmark layout, documented in the README):
`id`, `image` (relative to the images folder), `question`, and per kind:
  pope      answer yes/no, category = split (adversarial / popular / random)
  mme       answer Yes/No, category = subtask (existence, count, ..., OCR)
  gqa       answer (the gold short answer)
  textvqa   answers: the 10 human answers
  scienceqa choices: [..], answer: index of the right one, optional hint (ScienceQA-IMG: image items only)
  mmbench   options: {"A": .., "B": ..}, answer: letter, index (rotations share index % 1e6), optional hint
Prompts follow LLaVA's evaluation scripts (short-answer or option-letter suffix).
"""

from __future__ import annotations

from collections import defaultdict

from clipdpo.evaluate import llava_suite, vqa
from clipdpo.evaluate.config import LETTER_ANSWER, SHORT_ANSWER, Benchmark
from clipdpo.evaluate.data import EvalInputError, Item, image_uri, read_jsonl, require
from clipdpo.storage import Storage, join

REQUIRED = {
    "pope": {"answer": str, "category": str},
    "mme": {"answer": str, "category": str},
    "gqa": {"answer": str},
    "textvqa": {"answers": list},
    "scienceqa": {"choices": list, "answer": int},
    "mmbench": {"options": dict, "answer": str, "index": int},
}


def _prompt(kind: str, row: dict) -> str:
    if kind in ("scienceqa", "mmbench"):
        options = (dict(zip(vqa.SCIENCEQA_OPTIONS, row["choices"])) if kind == "scienceqa" else row["options"])
        lines = ([f"Context: {row['hint']}"] if kind == "scienceqa" and row.get("hint") else
                 [row["hint"]] if row.get("hint") else [])
        lines.append(row["question"])
        lines.extend(f"{letter}. {text}" for letter, text in options.items())
        return "\n".join(lines) + LETTER_ANSWER
    return row["question"] + SHORT_ANSWER


def load_items(storage: Storage, benchmark: Benchmark) -> list[Item]:
    uri = join(benchmark.root, "questions.jsonl")
    images = benchmark.images or benchmark.root
    items, seen = [], set()
    for number, row in read_jsonl(storage, uri, f"{benchmark.kind} questions"):
        where = f"{uri}:{number}"
        require(row, {"id": (str, int), "image": str, "question": str, **REQUIRED[benchmark.kind]}, where)
        if benchmark.kind in ("pope", "mme") and row["answer"].strip().lower() not in ("yes", "no"):
            raise EvalInputError(f"{where}: field 'answer' should be yes or no, got {row['answer']!r}")
        if benchmark.kind == "scienceqa" and not 0 <= row["answer"] < len(row["choices"]) <= 5:
            raise EvalInputError(f"{where}: 'answer' {row['answer']} is not an index into 'choices' (2-5 of them)")
        if benchmark.kind == "mmbench" and row["answer"] not in row["options"]:
            raise EvalInputError(f"{where}: 'answer' {row['answer']!r} is not one of 'options' {sorted(row['options'])}")
        item_id = str(row["id"])
        if item_id in seen:
            raise EvalInputError(f"{where}: id {item_id!r} appears twice")
        seen.add(item_id)
        items.append(Item(id=item_id, image=image_uri(images, row["image"]), prompt=_prompt(benchmark.kind, row),
                          fields=row))
        if benchmark.limit and len(items) >= benchmark.limit:
            break
    if not items:
        raise EvalInputError(f"{uri}: no questions")
    return items


def score(kind: str, items: list[Item], responses: dict[str, str]) -> dict:
    """The benchmark's metrics; `headline` is the number of the paper's Table 4 (MME: perception score)."""
    missing = [item.id for item in items if item.id not in responses]
    if missing:
        raise EvalInputError(f"{kind}: {len(missing)} item(s) have no response, e.g. {missing[:5]}")
    replies = [responses[item.id] for item in items]
    rows = [item.fields for item in items]
    match kind:
        case "pope":
            splits: dict[str, list[int]] = defaultdict(list)
            for position, row in enumerate(rows):
                splits[row["category"]].append(position)
            per_split = {split: llava_suite.pope_metrics([rows[i]["answer"] for i in where],
                                                         [replies[i] for i in where])
                         for split, where in sorted(splits.items())}
            f1 = 100 * sum(m["f1"] for m in per_split.values()) / len(per_split)
            return {"headline": f1, "f1_mean": f1, "splits": per_split}
        case "mme":
            scores = llava_suite.mme_scores([llava_suite.MMEItem(row["category"], row["image"], row["answer"], reply)
                                             for row, reply in zip(rows, replies)])
            return {"headline": scores["perception"], **scores}
        case "gqa":
            accuracy = 100 * sum(vqa.gqa_correct(r, row["answer"]) for r, row in zip(replies, rows)) / len(rows)
            return {"headline": accuracy, "accuracy": accuracy, "questions": len(rows)}
        case "textvqa":
            accuracy = 100 * sum(vqa.vqa_accuracy(r, row["answers"]) for r, row in zip(replies, rows)) / len(rows)
            return {"headline": accuracy, "accuracy": accuracy, "questions": len(rows)}
        case "scienceqa":
            correct = [vqa.scienceqa_correct(r, row["answer"], len(row["choices"])) for r, row in zip(replies, rows)]
            failed = sum(vqa.scienceqa_letter(r) == "FAILED" for r in replies)
            accuracy = 100 * sum(correct) / len(rows)
            return {"headline": accuracy, "accuracy": accuracy, "questions": len(rows), "unparsed": failed}
        case "mmbench":
            result = llava_suite.mmbench_circular([{"index": row["index"], "prediction": r, "answer": row["answer"]}
                                                   for r, row in zip(replies, rows)])
            return {"headline": 100 * result["circular_accuracy"], **result}
    raise ValueError(f"unknown benchmark kind {kind!r}")
