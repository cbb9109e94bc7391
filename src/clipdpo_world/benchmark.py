"""The world benchmark on held-out images, in the layouts the evaluate stage reads unchanged.

- AMBER's official layout (`AMBER/data/`: annotations.json, relation.json, safe_words.txt,
  metrics.txt, query/query_all.json; `AMBER/image/`): generative items whose "truth" is the
  image's objects (and background nouns) and whose "hallu" words are the absent partners of its
  objects (the words the world tempts a model to say), then discriminative items: existence,
  attribute (colour as "state", number) and relation (left of). The world has no actions.
- A zero-shot class folder (`zero-shot/<kind>/<image>.png`): images with one object group.
- POPE-style questions (`pope/questions.jsonl`): "random" (any absent kind) and "adversarial"
  (the absent partner) negatives, each balanced with a "yes" about an object that is there.
"""

from __future__ import annotations

import json

import numpy as np

from clipdpo.evaluate import amber
from clipdpo.storage import Storage, join
from clipdpo_world import language
from clipdpo_world.metrics import truth
from clipdpo_world.scene import KIND_COLOURS, KINDS, PLURALS, Scene, SceneConfig, png_bytes, render

AMBER_TYPES = {
    "existence": "discriminative-hallucination",
    "attribute-state": "discriminative-attribute-state",
    "attribute-number": "discriminative-attribute-number",
    "relation": "discriminative-relation",
}
DESCRIBE_QUERY = "Describe this image."  # AMBER's own generative query


def amber_files(scenes: list[Scene], seed: int) -> tuple[list[dict], list[dict]]:
    """(annotations, queries) in the official layout: generative items first, ids are positions."""
    rng = np.random.default_rng([seed, 7])
    annotations, queries = [], []
    for n, scene in enumerate(scenes):
        annotations.append(
            {
                "id": n + 1,
                "type": "generative",
                "truth": sorted(truth(scene)),
                "hallu": sorted(set(scene.absent_partners)),
            }
        )
        queries.append({"id": n + 1, "image": f"AMBER_{n + 1}.png", "query": DESCRIBE_QUERY})
    for n, scene in enumerate(scenes):
        for kind, question, answer in language.questions(scene, rng):
            item_id = len(annotations) + 1
            annotations.append({"id": item_id, "type": AMBER_TYPES[kind], "truth": answer.lower()})
            queries.append({"id": item_id, "image": f"AMBER_{n + 1}.png", "query": question})
    return annotations, queries


def pope_rows(scenes: list[Scene], seed: int) -> list[dict]:
    rng = np.random.default_rng([seed, 8])
    # (a type comment, not an annotation: the world key hashes this module's syntax tree, which has no comments)
    rows = []  # type: list[dict]
    for scene in scenes:
        present = scene.kinds
        absent = [k for k in KINDS if k not in present]
        negatives = {"random": absent[int(rng.integers(len(absent)))]}
        if scene.absent_partners:
            negatives["adversarial"] = scene.absent_partners[int(rng.integers(len(scene.absent_partners)))]
        for category, negative in negatives.items():
            positive = present[int(rng.integers(len(present)))]
            for kind, answer in ((positive, "yes"), (negative, "no")):
                rows.append(
                    {
                        "id": len(rows) + 1,
                        "image": f"{scene.image_id}.png",
                        "category": category,
                        "question": language.existence_question(kind),
                        "answer": answer,
                    }
                )
    return rows


def write(
    root: str, scenes: list[Scene], seed: int, storage: Storage | None = None, cfg: SceneConfig = SceneConfig()
) -> dict:
    """Write the benchmarks under `root` (folder or s3:// prefix); return the evaluate config's benchmark part
    (its AMBER `nlp` and zero-shot `text_encoder` are the caller's to add)."""
    storage = storage or Storage()
    annotations, queries = amber_files(scenes, seed)
    pope = pope_rows(scenes, seed)
    single = [s for s in scenes if len(s.objects) == 1]
    data = join(root, "AMBER", "data")
    files = {
        join(data, "annotations.json"): json.dumps(annotations),
        join(data, "relation.json"): json.dumps({word: [] for word in language.vocabulary()}),
        join(data, "safe_words.txt"): "",
        join(data, "metrics.txt"): amber.start_counters_text(),
        join(data, "query", "query_all.json"): json.dumps(queries),
        join(root, "pope", "questions.jsonl"): "".join(json.dumps(row) + "\n" for row in pope),
        join(root, "zero-shot", "classes.json"): json.dumps(
            {k: class_descriptions(k) for k in sorted({s.kinds[0] for s in single})}
        ),
    }
    for uri, text in files.items():
        storage.write_bytes(uri, text.encode())
    for n, scene in enumerate(scenes):
        image = png_bytes(render(scene, cfg))
        storage.write_bytes(join(root, "AMBER", "image", f"AMBER_{n + 1}.png"), image)
        storage.write_bytes(join(root, "pope", f"{scene.image_id}.png"), image)
        if len(scene.objects) == 1:
            storage.write_bytes(join(root, "zero-shot", scene.kinds[0], f"{scene.image_id}.png"), image)
    return config(root)


def class_descriptions(kind: str) -> list[str]:
    """A zero-shot class's descriptions: its name, then each way the world's language names it (its two colours,
    one or two of it: the model's answers to the zero-shot prompt when right). The classifier takes a class's
    nearest description (`class_pooling: max`): the world CLIP's text tower, trained on image-caption pairs of a
    few thousand images, puts "a blue ball." nearer "a blue book." than a mean of ball's forms (72% of the
    answer forms classified right with mean pooling, measured on world 0), where a web-trained SigLIP would not."""
    forms = [f"a {colour} {kind}" for colour in KIND_COLOURS[kind]]
    forms += [f"two {colour} {PLURALS[kind]}" for colour in KIND_COLOURS[kind]]
    return [kind, *forms]


def config(root: str) -> dict:
    """The evaluate config's benchmark part for a world benchmark written under `root` (its AMBER `nlp` and
    zero-shot `text_encoder` are the caller's to add)."""
    return {
        "amber": {"root": join(root, "AMBER", "data")},
        "zero_shot": {
            "datasets": [{"name": "world-objects", "root": join(root, "zero-shot")}],
            "prompt": language.MAIN_OBJECT_PROMPT,
            "class_template": "{}.",
            "class_pooling": "max",
        },
        # POPE's own protocol, the question alone: the world LLaVA never learnt LLaVA-1.5's short-answer
        # instruction (trained on it as well, it learnt the questions in neither of two SFTs of world 0)
        "suite": [{"kind": "pope", "root": join(root, "pope"), "instruction": ""}],
    }
