"""A small demo benchmark from scikit-image's photos, in the real layouts: the local default run uses it.

AMBER's official layout (annotations with truth/hallu words, relation words, safe words, counters,
query file, image folder), a zero-shot image folder per class, and POPE questions, all written by
hand for six of the built-in photos. It shows the evaluate stage end to end without any download;
with the tiny random models the numbers are noise, as the local run's captions are.
"""

from __future__ import annotations

import json

from clipdpo.demo import photos
from clipdpo.evaluate import amber
from clipdpo.storage import Storage, join

# photo -> (objects in it, objects not in it), in words of the demo vocabulary below
PHOTOS = {
    "astronaut": (["person", "flag"], ["dog", "car"]),
    "chelsea": (["cat"], ["dog", "ball"]),
    "coffee": (["cup", "coffee", "spoon"], ["cake"]),
    "rocket": (["rocket", "sky"], ["airplane", "bird"]),
    "horse": (["horse"], ["person"]),
    "camera": (["man", "camera"], ["dog"]),
}
RELATION = {
    "person": ["woman", "astronaut"],
    "flag": [],
    "dog": ["puppy"],
    "car": [],
    "cat": ["kitten"],
    "ball": [],
    "cup": ["mug"],
    "coffee": [],
    "spoon": [],
    "cake": [],
    "rocket": ["spaceship"],
    "sky": [],
    "airplane": ["plane"],
    "bird": [],
    "horse": ["pony"],
    "man": [],
    "camera": [],
}
ZERO_SHOT_CLASSES = {
    "astronaut": "person",
    "chelsea": "cat",
    "coffee": "cup",
    "rocket": "rocket",
    "horse": "horse",
    "camera": "person",
}


def write(root: str, storage: Storage | None = None) -> dict:
    """Write the demo benchmarks under `root`; return the evaluate config's benchmark part."""
    storage = storage or Storage()
    annotations: list[dict] = []
    queries: list[dict] = []
    pope: list[dict] = []
    for name, (truth, hallu) in PHOTOS.items():
        annotations.append({"id": len(annotations) + 1, "type": "generative", "truth": truth, "hallu": hallu})
        queries.append({"id": len(queries) + 1, "image": f"AMBER_{name}.jpg", "query": "Describe this image."})
    for name, (truth, hallu) in PHOTOS.items():
        for word, answer in [(w, "yes") for w in truth] + [(w, "no") for w in hallu]:
            item_id = len(annotations) + 1
            question = f"Is there a {word} in this image?"
            annotations.append({"id": item_id, "type": "discriminative-hallucination", "truth": answer})
            queries.append({"id": item_id, "image": f"AMBER_{name}.jpg", "query": question})
            pope.append(
                {"id": item_id, "image": f"{name}.jpg", "question": question, "answer": answer, "category": "demo"}
            )
    amber_data = join(root, "AMBER", "data")
    files = {
        join(amber_data, "annotations.json"): json.dumps(annotations),
        join(amber_data, "relation.json"): json.dumps(RELATION),
        join(amber_data, "safe_words.txt"): "sky\n",
        join(amber_data, "metrics.txt"): amber.start_counters_text(),
        join(amber_data, "query", "query_all.json"): json.dumps(queries),
        join(root, "pope", "questions.jsonl"): "".join(json.dumps(row) + "\n" for row in pope),
        join(root, "zero-shot", "classes.json"): json.dumps({c: c for c in set(ZERO_SHOT_CLASSES.values())}),
    }
    for uri, text in files.items():
        storage.write_bytes(uri, text.encode())
    for name in PHOTOS:
        photo = photos.jpeg(name)
        storage.write_bytes(join(root, "AMBER", "image", f"AMBER_{name}.jpg"), photo)
        storage.write_bytes(join(root, "pope", f"{name}.jpg"), photo)
        storage.write_bytes(join(root, "zero-shot", ZERO_SHOT_CLASSES[name], f"{name}.jpg"), photo)
    return {
        "amber": {"root": amber_data},
        "zero_shot": {"datasets": [{"name": "demo-objects", "root": join(root, "zero-shot")}]},
        "suite": [{"kind": "pope", "root": join(root, "pope")}],
    }
