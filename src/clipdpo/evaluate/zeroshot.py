"""Zero-shot classification through captions (Sec. 6.2, Table 3).

The model describes the main object of each image; the caption and every class name (in a
template such as "a photo of a {}.") are embedded with an open_clip text encoder (SigLIP in the
paper, to stay apart from the CLIP that ranked the training captions), and the image is assigned
the class whose text is closest to its caption (text-text cosine). Metric: top-1 accuracy.
A class may have several descriptions (classes.json maps a label to a list): its text embedding is then
the normalised mean of theirs, CLIP's prompt ensembling (Radford et al. 2021, Sec. 3.1.4), or with
`class_pooling: max` the class is as near as its nearest description (for descriptions that list the forms a
caption takes, where a mean would blur them).

The paper's nine datasets are presets in name only (PRESETS): the user points each at their own
copy, as an image folder per class or a manifest.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clipdpo.evaluate.bootstrap import by_image
from clipdpo.evaluate.config import TextEncoderConfig, ZeroShotConfig, ZeroShotDataset
from clipdpo.evaluate.data import IMAGE_SUFFIXES, EvalInputError, Item, read_jsonl, require
from clipdpo.storage import NotFound, Storage, is_remote, join

# Table 3's datasets; the usual evaluation split of each (as in CLIP / CoOp) is what to point `root` at.
PRESETS = {
    "stanford_cars": "Stanford Cars, test split (196 classes)",
    "oxford_pets": "Oxford-IIIT Pets, test split (37 classes)",
    "oxford_flowers": "Oxford Flowers-102, test split (102 classes)",
    "imagenet": "ImageNet-1k, validation split (1000 classes; classes.json maps wnids to names)",
    "food101": "Food-101, test split (101 classes)",
    "eurosat": "EuroSAT RGB, test split (10 classes)",
    "caltech101": "Caltech-101, test split (100 classes without 'background')",
    "ucf101": "UCF-101, middle frame of each test video (101 classes)",
    "sun397": "SUN397, test split (397 classes)",
}


@dataclass(frozen=True)
class ZeroShotClass:
    """A class: its name (reports) and the descriptions its text embedding averages (the name alone by default)."""

    name: str
    descriptions: tuple[str, ...]


def load_dataset(storage: Storage, dataset: ZeroShotDataset, prompt: str) -> tuple[list[Item], list[ZeroShotClass]]:
    """The items (label in fields) and the classes, in a fixed order."""
    root = dataset.root.rstrip("/") if is_remote(dataset.root) else str(Path(dataset.root))
    labelled: list[tuple[str, str]] = []  # (image URI, label)
    if dataset.layout == "folder":
        for uri in storage.list(root):
            relative = uri[len(root) + 1 :] if uri.startswith(root + "/") else uri
            parts = relative.split("/")
            if len(parts) >= 2 and relative.lower().endswith(IMAGE_SUFFIXES):
                labelled.append((uri, parts[0]))
        if not labelled:
            raise EvalInputError(f"zero_shot {dataset.name}: no images under {root}/<class>/ (layout 'folder')")
    else:
        uri = join(root, "manifest.jsonl")
        for number, row in read_jsonl(storage, uri, f"zero_shot {dataset.name} manifest"):
            require(row, {"image": str, "label": str}, f"{uri}:{number}")
            labelled.append((join(root, row["image"]), row["label"]))
        if not labelled:
            raise EvalInputError(f"{uri}: no images")
    labels = sorted({label for _, label in labelled})
    descriptions: dict[str, tuple[str, ...]] = {label: (label,) for label in labels}
    descriptions.update({label: names for label, names in read_class_names(storage, root).items() if label in labels})
    labelled.sort()
    if dataset.limit:
        labelled = labelled[: dataset.limit]
    position = {label: index for index, label in enumerate(labels)}
    items = [
        Item(id=f"{index:07d}", image=uri, prompt=prompt, fields={"label": label, "class_index": position[label]})
        for index, (uri, label) in enumerate(labelled)
    ]
    return items, [ZeroShotClass(descriptions[label][0], descriptions[label]) for label in labels]


def read_class_names(storage: Storage, root: str) -> dict[str, tuple[str, ...]]:
    """`<root>/classes.json`: label -> class name, or label -> [descriptions] (the first names the class)."""
    uri = join(root, "classes.json")
    try:
        mapping = json.loads(storage.read_bytes(uri))
    except NotFound:
        return {}
    except json.JSONDecodeError as err:
        raise EvalInputError(f"{uri}: not valid JSON ({err})") from err
    if not isinstance(mapping, dict):
        raise EvalInputError(f"{uri}: expected an object label -> class name (or a list of descriptions)")
    out = {}
    for label, names in mapping.items():
        listed = names if isinstance(names, list) else [names]
        if not listed or not all(isinstance(name, str) and name for name in listed):
            raise EvalInputError(f"{uri}: class {label!r}: expected a name or a non-empty list of descriptions")
        out[str(label)] = tuple(listed)
    return out


class TextEncoder:
    """open_clip text tower, L2-normalised embeddings."""

    def __init__(self, config: TextEncoderConfig):
        from clipdpo.score.scorer import ClipScorer, ScorerConfig

        self._scorer = ClipScorer(
            ScorerConfig(
                model_name=config.model_name,
                pretrained=config.pretrained,
                model_config_dir=config.model_config_dir,
                device=config.device,
                init_seed=config.init_seed,
                categories={"any": ["a photo"]},
            )
        )
        self.description = f"open_clip {config.model_name} ({config.pretrained or 'untrained weights'})"

    def encode(self, texts: list[str]) -> np.ndarray:
        return self._scorer.encode_texts(texts)


def classify(caption_embeddings: np.ndarray, class_embeddings: np.ndarray) -> np.ndarray:
    """Index of the nearest class per caption (both sides L2-normalised: dot product = cosine). `class_embeddings`
    [classes, dim], or [classes, descriptions, dim] for max pooling: a class is as near as its nearest description."""
    if class_embeddings.ndim == 3:
        return np.einsum("nd,ckd->nck", caption_embeddings, class_embeddings).max(axis=2).argmax(axis=1)
    return (caption_embeddings @ class_embeddings.T).argmax(axis=1)


def class_embeddings(classes: list[ZeroShotClass], encoder: TextEncoder, config: ZeroShotConfig) -> np.ndarray:
    """The class texts' embeddings, each the normalised mean of its descriptions' (prompt ensembling): the same
    for every model, so computed once per dataset."""
    texts = [config.class_template.format(text) for one in classes for text in one.descriptions]
    embedded = encoder.encode(texts)
    bounds = np.cumsum([0] + [len(one.descriptions) for one in classes])
    groups = [embedded[start:end] for start, end in zip(bounds[:-1], bounds[1:])]
    if config.class_pooling == "max":  # padded with a class's first description, which leaves its max unchanged
        widest = max(len(group) for group in groups)
        return np.stack([np.concatenate([group] + [group[:1]] * (widest - len(group))) for group in groups])
    means = np.stack([group.mean(axis=0) for group in groups])
    return means / np.linalg.norm(means, axis=1, keepdims=True)


def evaluate_dataset(
    items: list[Item],
    class_list: list[ZeroShotClass],
    classes: np.ndarray,
    captions: dict[str, str],
    encoder: TextEncoder,
) -> dict:
    """`classes`: class_embeddings() of `class_list`."""
    class_names = [one.name for one in class_list]
    missing = [item.id for item in items if item.id not in captions]
    if missing:
        raise EvalInputError(f"zero_shot: {len(missing)} image(s) have no caption, e.g. {missing[:5]}")
    predictions = classify(encoder.encode([captions[item.id] for item in items]), classes)
    truth = [item.fields["class_index"] for item in items]
    correct = predictions == np.asarray(truth)
    per_class: dict[str, list[int]] = {}
    for item, ok in zip(items, correct):
        per_class.setdefault(class_names[item.fields["class_index"]], []).append(int(ok))
    return {
        "top1": top1(float(correct.sum()), len(items)),
        "images": len(items),
        "classes": len(class_names),
        "per_class_top1": {name: 100.0 * sum(v) / len(v) for name, v in sorted(per_class.items())},
        "examples": [
            {
                "image": item.image,
                "caption": captions[item.id],
                "predicted": class_names[int(p)],
                "truth": class_names[item.fields["class_index"]],
            }
            for item, p in list(zip(items, predictions))[:3]
        ],
        "per_image": by_image(
            ((item.image, {"correct": float(ok), "images": 1.0}) for item, ok in zip(items, correct)),
            ["correct", "images"],
        ),
    }


def top1(correct: float, images: float) -> float:
    return 100.0 * correct / images


def measure(totals: dict[str, float]) -> dict[str, float | None]:
    """Top-1 from summed per-image counts (a bootstrap resample's)."""
    return {"top1": top1(totals["correct"], totals["images"])}
