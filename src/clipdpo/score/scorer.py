"""open_clip wrapper: normalised image and text embeddings; scores on the filter's scale (JudgeConfig)."""

from __future__ import annotations

import functools
import itertools
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from PIL import Image

from clipdpo import config as config_lib
from clipdpo.progress import Progress
from clipdpo.score import judge
from clipdpo.score.phrases import ObjectPhrases

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


# Head nouns of noun chunks that name the picture itself or a place in it, not an object it may show.
NOT_OBJECTS = (
    "image",
    "picture",
    "photo",
    "photograph",
    "scene",
    "view",
    "left",
    "right",
    "middle",
    "center",
    "centre",
    "top",
    "bottom",
    "front",
    "back",
    "side",
    "background",
    "foreground",
    "corner",
)
SCALES = ("auto", "clip", "siglip")


@dataclass(frozen=True)
class JudgeConfig:
    """How the scorer's cosines become the scores the filter reads.

    `scale`: `clip` is the paper's 100 x cos. `siglip` is for models trained with the sigmoid loss (SigLIP:
    a `logit_bias` beside `logit_scale`): score = t cos + b + `siglip_offset`, with t = exp(logit_scale) and b the
    model's own. `auto` (default): `siglip` for a model with a logit_bias, `clip` otherwise.

    Why SigLIP needs its own scale. The filter keeps a pair when the chosen caption beats the rejected one by
    `pair_min_margin` (2) and drops captions under `caption_min_score` (28): numbers on CLIP's logit scale, since
    100 x cos is CLIP's logit (temperature 100). A difference of CLIP logits is the log-ratio of the two captions'
    softmax probabilities; a difference of SigLIP logits, t (cos_a - cos_b), is the log-ratio of their match
    odds. Both are natural-log evidence, so the margin keeps its meaning on SigLIP's logit unscaled. 100 x cos
    would not do: SigLIP's t is learnt (10 at initialisation in its recipe) and differs from model to model, and
    its even odds lie at cos = -b/t, unrelated to CLIP's matching cosines, so the CLIP floor would keep or drop by
    accident and the margin would mean another evidence ratio for every model. Nor 100 x sigmoid(logit):
    probabilities flatten where both captions are unlikely (long generated captions mostly are), so real
    differences would fall under the margin. The logit has no absolute level shared with CLIP, so
    `siglip_offset` puts even odds (logit 0) on the CLIP score 28: with the paper's floors a caption (and a QA
    check caption) is kept when SigLIP rates a match at least as likely as not, and a question when its odds are
    at least e^-3 (floor 25). The same scale applies to every score column (captions, questions, check captions,
    image categories).

    `phrase_weight` (lambda, 0 = off): the noun-level judge. Each caption's noun chunks (spaCy's parser,
    `spacy_model`: a package name or model folder; chunks headed by a pronoun or by one of `not_objects` are
    left out) are scored against the image like captions, pooled by `phrase_pool` (`min` or `mean`), and
    mixed: score = (1 - lambda) x caption score + lambda x pooled phrase score. `min` follows ALOHa (Petryk et
    al., NAACL 2024), which scores every object a caption names and rates the caption by its least supported
    object: one hallucinated object makes the caption hallucinated however well the rest matches, and a
    whole-caption CLIP score averages such an object away. A convex mixture (not caption + lambda x phrases)
    keeps the score on the filter's scale, so the floors and the margin stay as they are. A caption without an
    object phrase keeps its own score. Phrases apply to caption rows only; QA check captions are scored whole.
    """

    scale: str = "auto"  # auto | clip | siglip
    siglip_offset: float = 28.0  # the score of even odds (logit 0) under the siglip scale
    phrase_weight: float = 0.0  # lambda; 0: the whole caption alone (no spaCy needed)
    phrase_pool: str = "min"  # min | mean
    spacy_model: str = "en_core_web_lg"  # a package name or a model folder (with phrase_weight > 0)
    not_objects: list[str] = field(default_factory=lambda: list(NOT_OBJECTS))  # chunk heads that name no object

    RANGES = {"siglip_offset": config_lib.FINITE, "phrase_weight": config_lib.FRACTION}

    def __post_init__(self) -> None:
        config_lib.check_ranges(self)
        if self.scale not in SCALES:
            raise ValueError(f"scale: {self.scale!r}; expected one of {list(SCALES)}")
        if self.phrase_pool not in judge.POOLS:
            raise ValueError(f"phrase_pool: {self.phrase_pool!r}; expected one of {sorted(judge.POOLS)}")


@dataclass(frozen=True)
class ScorerConfig:
    """Which open_clip model judges and how to run it. Default: the paper's DFN ViT-H/14.

    Any open_clip model: `model_name` an architecture (open_clip's own, or one of `model_config_dir`'s JSONs),
    `pretrained` an open_clip tag or a local checkpoint. `judge`: how its cosines become scores (JudgeConfig)."""

    model_name: str = "ViT-H-14-quickgelu"
    pretrained: str | None = "dfn5b"  # an open_clip tag, a local checkpoint path, or None
    model_config_dir: str | None = None  # extra open_clip model-config JSONs to register
    device: str = "auto"
    precision: str = "fp32"  # fp32 | bf16 | fp16 (GPU)
    image_batch_size: int = 32
    text_batch_size: int = 256
    init_seed: int = 0  # seeds the weights when pretrained is None (architecture-only runs)
    categories: dict[str, list[str]] = field(default_factory=lambda: dict(DEFAULT_CATEGORIES))
    judge: JudgeConfig = field(default_factory=JudgeConfig)  # the scale and the noun-level judge

    RANGES = {
        "image_batch_size": config_lib.AT_LEAST_1,
        "text_batch_size": config_lib.AT_LEAST_1,
        "init_seed": config_lib.SEED,
    }

    def __post_init__(self) -> None:
        config_lib.check_ranges(self)


def score_scale(model, cfg: JudgeConfig, model_name: str) -> Callable[[np.ndarray], np.ndarray]:
    """Cosines -> scores for `model` under `cfg.scale` (JudgeConfig): the paper's 100 x cos, or SigLIP's logit
    with the model's own logit_scale and logit_bias, offset onto the filter's scale."""
    bias = getattr(model, "logit_bias", None)
    scale = cfg.scale if cfg.scale != "auto" else "siglip" if bias is not None else "clip"
    if scale == "clip":
        return judge.clip_scores
    if bias is None:
        raise config_lib.ConfigError(
            f"score.judge.scale: siglip needs a model trained with the sigmoid loss (a logit_bias); "
            f"{model_name} has none: use scale clip or auto"
        )
    t, b = float(model.logit_scale.detach().float().exp()), float(bias.detach().float())
    log.info("judge %s: SigLIP scale, t %.4g, b %.4g, offset %g", model_name, t, b, cfg.siglip_offset)
    return functools.partial(judge.siglip_scores, logit_scale=t, logit_bias=b, offset=cfg.siglip_offset)


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
        self.scale = score_scale(self.model, config.judge, config.model_name)
        self.tokenizer = open_clip.get_tokenizer(config.model_name)
        self.context_length = int(getattr(self.tokenizer, "context_length", 77))
        self.config = config
        # Work counters: the score stage reports them per shard.
        self.image_encodes = 0
        self.text_encodes = 0
        self.categories = list(config.categories)
        self.prototypes = self._prototypes(config.categories)
        self._phrases: ObjectPhrases | None = None  # spaCy loads on the first caption the noun-level judge sees

    def object_phrases(self, texts: list[str]) -> list[list[str]]:
        """Each text's object phrases (clipdpo.score.phrases) with the judge's spaCy model."""
        if self._phrases is None:
            self._phrases = ObjectPhrases(self.config.judge.spacy_model, self.config.judge.not_objects)
        return self._phrases.of(texts)

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
        return [self.categories[i] for i in best], self.scale(sims[np.arange(len(best)), best])
