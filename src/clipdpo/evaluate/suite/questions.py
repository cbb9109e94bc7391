"""Reading a LLaVA-suite benchmark's `questions.jsonl` into items with the benchmark's own prompt."""

from __future__ import annotations

from clipdpo.evaluate.config import LETTER_ANSWER, SHORT_ANSWER, Benchmark
from clipdpo.evaluate.data import EvalInputError, Item, image_uri, read_jsonl, require
from clipdpo.evaluate.suite.scienceqa import SCIENCEQA_OPTIONS
from clipdpo.storage import Storage, join

REQUIRED: dict[str, dict[str, type | tuple[type, ...]]] = {  # kind -> field -> its type(s)
    "pope": {"answer": str, "category": str},
    "mme": {"answer": str, "category": str},
    "gqa": {"answer": str},
    "textvqa": {"answers": list},
    "scienceqa": {"choices": list, "answer": int},
    "mmbench": {"options": dict, "answer": str, "index": int},
}


def prompt(kind: str, row: dict, instruction: str | None = None) -> str:
    """The question as the model is asked it: LLaVA-1.5's eval instruction for the kind appended, or
    `instruction` instead (a benchmark's setting; "" asks the question alone)."""
    if kind in ("scienceqa", "mmbench"):
        options = dict(zip(SCIENCEQA_OPTIONS, row["choices"])) if kind == "scienceqa" else row["options"]
        lines = (
            [f"Context: {row['hint']}"]
            if kind == "scienceqa" and row.get("hint")
            else [row["hint"]]
            if row.get("hint")
            else []
        )
        lines.append(row["question"])
        lines.extend(f"{letter}. {text}" for letter, text in options.items())
        return "\n".join(lines) + (LETTER_ANSWER if instruction is None else instruction)
    return row["question"] + (SHORT_ANSWER if instruction is None else instruction)


def _check_answer(kind: str, row: dict, where: str) -> None:
    if kind in ("pope", "mme") and row["answer"].strip().lower() not in ("yes", "no"):
        raise EvalInputError(f"{where}: field 'answer' should be yes or no, got {row['answer']!r}")
    if kind == "scienceqa" and not 0 <= row["answer"] < len(row["choices"]) <= 5:
        raise EvalInputError(f"{where}: 'answer' {row['answer']} is not an index into 'choices' (2-5 of them)")
    if kind == "mmbench" and row["answer"] not in row["options"]:
        raise EvalInputError(f"{where}: 'answer' {row['answer']!r} is not one of 'options' {sorted(row['options'])}")


def load_items(storage: Storage, benchmark: Benchmark) -> list[Item]:
    uri = join(benchmark.root, "questions.jsonl")
    images = benchmark.images or benchmark.root
    items, seen = [], set()
    for number, row in read_jsonl(storage, uri, f"{benchmark.kind} questions"):
        where = f"{uri}:{number}"
        require(row, {"id": (str, int), "image": str, "question": str, **REQUIRED[benchmark.kind]}, where)
        _check_answer(benchmark.kind, row, where)
        item_id = str(row["id"])
        if item_id in seen:
            raise EvalInputError(f"{where}: id {item_id!r} appears twice")
        seen.add(item_id)
        items.append(
            Item(
                id=item_id,
                image=image_uri(images, row["image"]),
                prompt=prompt(benchmark.kind, row, benchmark.instruction),
                fields=row,
            )
        )
        if benchmark.limit and len(items) >= benchmark.limit:
            break
    if not items:
        raise EvalInputError(f"{uri}: no questions")
    return items
