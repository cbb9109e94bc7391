"""MMBench: circular evaluation; a question counts only if every rotation of its options is
answered correctly (rotations share `index % 1_000_000`)."""

from __future__ import annotations

from collections import defaultdict


def mmbench_circular(records: list[dict]) -> dict:
    """records: {"index": int, "prediction": letter, "answer": letter}; circular accuracy and vanilla."""
    groups: dict[int, list[bool]] = defaultdict(list)
    for record in records:
        prediction = str(record["prediction"]).strip().upper()[:1]
        groups[int(record["index"]) % 1_000_000].append(prediction == str(record["answer"]).strip().upper())
    circular = sum(all(results) for results in groups.values()) / len(groups)
    vanilla = sum(results[0] for results in groups.values()) / len(groups)
    return {"circular_accuracy": circular, "vanilla_accuracy": vanilla, "questions": len(groups)}
