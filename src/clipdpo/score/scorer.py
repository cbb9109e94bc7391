"""open_clip wrapper: normalised image and text embeddings, scores = 100 x cosine."""

from __future__ import annotations

import itertools
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from PIL import Image

from clipdpo import config as config_lib
from clipdpo.progress import Progress

log = logging.getLogger("clipdpo.score")

# Four generic image categories (Sec. 4.2), ten descriptions each; prototype = mean embedding.
DEFAULT_CATEGORIES: dict[str, list[str]] = {
    "text": [
        "a photo of a document",
        "a scanned page of text",
        "a screenshot with text",
        "a book cover with a title",
        "a poster with large printed words",
        "a sign with writing on it",
        "a receipt",
        "a page of a book",
        "a slide with bullet points",
        "a label with printed text",
    ],
    "people": [
        "a photo of a person",
        "a portrait of a man",
        "a portrait of a woman",
        "a group of people",
        "a child playing",
        "people walking on a street",
        "a person doing sports",
        "a close-up of a face",
        "a crowd at an event",
        "a family posing for a photo",
    ],
    "objects": [
        "a photo of an object",
        "a close-up of a product",
        "a cup on a table",
        "a tool on a bench",
        "a piece of furniture",
        "a vehicle parked",
        "a plate of food",
        "an animal",
        "a household item",
        "a toy",
    ],
    "scenes": [
        "a landscape",
        "a city skyline",
        "a room interior",
        "a beach at sunset",
        "a forest",
        "a mountain view",
        "a street scene",
        "a kitchen",
        "a field of grass",
        "the night sky",
    ],
}


@dataclass(frozen=True)
class ScorerConfig:
    """Which CLIP and how to run it. Default: the paper's DFN ViT-H/14."""

    model_name: str = "ViT-H-14-quickgelu"
    pretrained: str | None = "dfn5b"  # an open_clip tag, a local checkpoint path, or None
    model_config_dir: str | None = None  # extra open_clip model-config JSONs to register
    device: str = "auto"
    precision: str = "fp32"  # fp32 | bf16 | fp16 (GPU)
    image_batch_size: int = 32
    text_batch_size: int = 256
    init_seed: int = 0  # seeds the weights when pretrained is None (architecture-only runs)
    categories: dict[str, list[str]] = field(default_factory=lambda: dict(DEFAULT_CATEGORIES))

    RANGES = {
        "image_batch_size": config_lib.AT_LEAST_1,
        "text_batch_size": config_lib.AT_LEAST_1,
        "init_seed": config_lib.SEED,
    }

    def __post_init__(self) -> None:
        config_lib.check_ranges(self)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class ClipScorer:
    def __init__(self, config: ScorerConfig):
        import open_clip

        if config.model_config_dir:
            open_clip.add_model_config(Path(config.model_config_dir))
        self.device = resolve_device(config.device)
        pretrained = config.pretrained
        torch.manual_seed(config.init_seed)  # untrained weights are the same on every run
        if pretrained and os.path.exists(pretrained):
            log.info("loading CLIP %s weights from %s", config.model_name, pretrained)
        self.model, _, self.preprocess = open_clip.create_model_and_transforms(
            config.model_name, pretrained=pretrained, device=self.device, precision=config.precision
        )
        self.model.eval()
        self.tokenizer = open_clip.get_tokenizer(config.model_name)
        self.context_length = int(getattr(self.tokenizer, "context_length", 77))
        self.config = config
        # Work counters: the score stage reports them per shard.
        self.image_encodes = 0
        self.text_encodes = 0
        self.categories = list(config.categories)
        self.prototypes = self._prototypes(config.categories)

    # -- embeddings --------------------------------------------------------------
    @torch.no_grad()
    def encode_images(
        self, images: Sequence[Image.Image] | Iterable[Image.Image], total: int | None = None
    ) -> np.ndarray:
        """Unit embeddings [images, dim]. `images` is taken a batch at a time: from an iterator that decodes
        (score.shard), memory holds one batch of decoded images. `total`: how many, for progress (default len)."""
        if total is None:
            if not isinstance(images, Sequence):
                raise TypeError("encode_images: pass `total` with an iterator of images")
            total = len(images)
        out, progress, encoded = [], Progress("score: image embeddings", total, unit="images"), 0
        iterator = iter(images)
        while True:
            decoded = list(itertools.islice(iterator, self.config.image_batch_size))
            if not decoded:
                break
            batch = torch.stack([self.preprocess(img) for img in decoded])
            del decoded  # not alive while the next batch decodes
            features = self.model.encode_image(batch.to(self.device), normalize=True)
            out.append(features.float().cpu().numpy())
            encoded += len(batch)
            progress.advance(len(batch))
        progress.finish()
        self.image_encodes += encoded
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)

    @torch.no_grad()
    def encode_texts(self, texts: list[str]) -> np.ndarray:
        out, progress = [], Progress("score: text embeddings", len(texts), unit="texts")
        for start in range(0, len(texts), self.config.text_batch_size):
            tokens = self.tokenizer(texts[start : start + self.config.text_batch_size]).to(self.device)
            features = self.model.encode_text(tokens, normalize=True)
            out.append(features.float().cpu().numpy())
            progress.advance(len(tokens))
        self.text_encodes += len(texts)
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)

    def token_counts(self, texts: list[str]) -> list[int]:
        """Untruncated token counts including start/end tokens (what must fit the context)."""
        inner = getattr(self.tokenizer, "tokenizer", None)  # open_clip's HFTokenizer wraps a HF one
        if hasattr(self.tokenizer, "encode"):
            return [len(self.tokenizer.encode(text)) + 2 for text in texts]
        if inner is not None:
            return [len(ids) for ids in inner(texts, add_special_tokens=True)["input_ids"]]
        raise TypeError(f"cannot count tokens with {type(self.tokenizer).__name__}")

    def _prototypes(self, categories: dict[str, list[str]]) -> np.ndarray:
        if not categories or any(len(d) == 0 for d in categories.values()):
            raise ValueError("categories: every category needs at least one description")
        rows = []
        for descriptions in categories.values():
            mean = self.encode_texts(list(descriptions)).mean(axis=0)
            rows.append(mean / np.linalg.norm(mean))
        self.text_encodes = 0  # prototypes are set-up, not per-row work
        return np.stack(rows)

    def categorize(self, image_embeddings: np.ndarray) -> tuple[list[str], np.ndarray]:
        sims = image_embeddings @ self.prototypes.T
        best = sims.argmax(axis=1)
        return [self.categories[i] for i in best], 100.0 * sims[np.arange(len(best)), best]
