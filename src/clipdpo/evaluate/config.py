"""Evaluate-stage config: the models to compare and the three evaluations of the paper (Sec. 6)."""

from __future__ import annotations

from dataclasses import dataclass, field

from clipdpo.config import AT_LEAST_1, FRACTION, NON_NEGATIVE, NOT_IN_KEY, PROBABILITY_MASS, SEED, check_ranges
from clipdpo.engines import ENGINES, ModelSpec

BENCHMARK_KINDS = ("pope", "mme", "gqa", "textvqa", "scienceqa", "mmbench")
SHORT_ANSWER = "\nAnswer the question using a single word or phrase."  # LLaVA's eval prompts
LETTER_ANSWER = "\nAnswer with the option's letter from the given choices directly."


@dataclass(frozen=True)
class NLPConfig:
    """Where AMBER's NLP resources come from (never downloaded at run time).

    backend `official`: nltk tokenizer + POS tagger + WordNet lemmatizer (data in `nltk_data`) and
    spaCy vectors (`spacy_model`: en_core_web_lg by default, as the official code). backend `spacy`:
    the spaCy model alone (its tokenizer, PTB tagger and lemmatizer, and its vectors), for places
    without the nltk data; the report says which produced the numbers."""

    backend: str = "official"  # official | spacy
    spacy_model: str = "en_core_web_lg"  # a package name or a model folder
    nltk_data: str | None = None

    def __post_init__(self) -> None:
        if self.backend not in ("official", "spacy"):
            raise ValueError(f"amber.nlp.backend: {self.backend!r}; expected 'official' or 'spacy'")


@dataclass(frozen=True)
class DecodingConfig:
    """How AMBER's descriptions (the generative items) are decoded. Default: greedy, one answer per item,
    as the official scripts. `samples` > 1 answers every generative item that many times (temperature > 0,
    seeded); CHAIR, Cover, Hal and Cog then count every answer as one description of its image."""

    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    samples: int = 1
    seed: int = 0

    RANGES = {"temperature": NON_NEGATIVE, "top_p": PROBABILITY_MASS, "samples": AT_LEAST_1, "seed": SEED}

    def __post_init__(self) -> None:
        check_ranges(self)
        if self.samples > 1 and self.temperature == 0:
            raise ValueError(
                f"amber.decoding: {self.samples} samples with temperature 0 would repeat one greedy "
                "answer; set temperature > 0 or samples 1"
            )

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 and self.samples == 1

    def describe(self) -> str:
        if self.greedy:
            return "greedy, 1 answer per description item (as the official scripts)"
        return (
            f"sampled (temperature {self.temperature:g}, top_p {self.top_p:g}, seed {self.seed}), "
            f"{self.samples} answer(s) per description item; CHAIR/Cover/Hal/Cog count every answer"
        )


@dataclass(frozen=True)
class AmberConfig:
    """AMBER in its official layout: `root` is its data/ folder, `images` its image/ folder."""

    root: str = ""
    images: str = ""  # default: <root>/../image
    query_file: str = "query/query_all.json"
    evaluation_type: str = "a"  # a | g | d | de | da | dr, as the official --evaluation_type
    discriminative_mode: str = "logits"  # logits (compare "Yes"/"No") | generate (free text, scored as is)
    similarity_threshold: float = 0.8
    nlp: NLPConfig = field(default_factory=NLPConfig)
    allow_partial: bool = False  # score with missing responses (then reported as incomplete)
    examples: int = 3  # qualitative examples: the first N generative items (by id), each model's description
    decoding: DecodingConfig = field(default_factory=DecodingConfig)  # of the descriptions; examples use sample 0

    RANGES = {"similarity_threshold": FRACTION, "examples": NON_NEGATIVE}

    def __post_init__(self) -> None:
        check_ranges(self)
        if self.discriminative_mode not in ("logits", "generate"):
            raise ValueError(f"amber.discriminative_mode: {self.discriminative_mode!r}; expected logits or generate")


@dataclass(frozen=True)
class ZeroShotDataset:
    """Images with class labels: `layout` folder (<root>/<class>/<image>) or manifest (<root>/manifest.jsonl
    of {"image": path under root, "label": class}). Optional <root>/classes.json maps labels to class names, or to
    lists of descriptions whose embeddings are averaged (prompt ensembling)."""

    name: str
    root: str
    layout: str = "folder"
    limit: int = 0  # first N images (after sorting), 0 = all

    RANGES = {"limit": NON_NEGATIVE}

    def __post_init__(self) -> None:
        check_ranges(self)
        if self.layout not in ("folder", "manifest"):
            raise ValueError(f"zero_shot dataset {self.name!r}: layout {self.layout!r}; expected folder or manifest")


@dataclass(frozen=True)
class TextEncoderConfig:
    """The text encoder that matches captions to class names. Default: SigLIP ViT-L/16, as the paper."""

    model_name: str = "ViT-L-16-SigLIP-256"
    pretrained: str | None = "webli"
    model_config_dir: str | None = None
    device: str = "auto"
    init_seed: int = 0

    RANGES = {"init_seed": SEED}

    def __post_init__(self) -> None:
        check_ranges(self)


@dataclass(frozen=True)
class ZeroShotConfig:
    datasets: list[ZeroShotDataset] = field(default_factory=list)
    prompt: str = "What is the main object in this image? Describe it in one short sentence."
    class_template: str = "a photo of a {}."
    # a class with several descriptions (classes.json lists): mean = CLIP's prompt ensembling (their normalised
    # mean); max = its nearest description
    class_pooling: str = "mean"
    text_encoder: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    max_new_tokens: int = 32

    RANGES = {"max_new_tokens": AT_LEAST_1}

    def __post_init__(self) -> None:
        check_ranges(self)
        if self.class_pooling not in ("mean", "max"):
            raise ValueError(f"zero_shot.class_pooling {self.class_pooling!r}; expected 'mean' or 'max'")


@dataclass(frozen=True)
class Benchmark:
    """One LLaVA-suite benchmark: `<root>/questions.jsonl` in clipdpo's benchmark layout (see README)
    and the images it names, relative to `images` (default: root)."""

    kind: str
    root: str
    name: str = ""  # default: kind
    images: str = ""
    limit: int = 0  # first N questions, 0 = all
    # what follows each question: None = LLaVA-1.5's eval instruction for the kind (short answer, or the option's
    # letter); "" = the question alone (POPE's own protocol); any other text is appended as given
    instruction: str | None = None

    RANGES = {"limit": NON_NEGATIVE}

    def __post_init__(self) -> None:
        check_ranges(self)
        if self.kind not in BENCHMARK_KINDS:
            raise ValueError(f"suite benchmark kind {self.kind!r}; expected one of {BENCHMARK_KINDS}")

    @property
    def label(self) -> str:
        return self.name or self.kind


@dataclass(frozen=True)
class EvaluateConfig:
    # The first model is the baseline the others are compared with (base, then trained). Not in the result
    # cache's key as a list: each cached result is keyed by its one model's content and engine (evaluate.fanout).
    models: list[ModelSpec] = field(default_factory=list, metadata=NOT_IN_KEY)
    amber: AmberConfig | None = None
    zero_shot: ZeroShotConfig | None = None
    suite: list[Benchmark] = field(default_factory=list)
    batch_size: int = field(default=8, metadata=NOT_IN_KEY)  # hf engine batch
    # responses saved per chunk: a restart redoes at most one chunk per task
    chunk_size: int = field(default=256, metadata=NOT_IN_KEY)
    max_new_tokens: int = 512  # descriptions; short answers use 16
    model_cache: str = field(default="/tmp/clipdpo-eval-models", metadata=NOT_IN_KEY)  # where s3:// models go
    # baseline results cached here by (model content, task, config, data, scoring code); "" = none
    result_cache: str = field(default="", metadata=NOT_IN_KEY)
    # The engine of the two models the pipeline step names itself when `models` is empty: the run's base
    # and its trained model (clipdpo.steps). A model listed in `models` names its own engine (in the key).
    engine: str = field(default="vllm", metadata=NOT_IN_KEY)  # vllm | hf
    # paired bootstrap intervals of every model's effect (evaluate.bootstrap): resamples of the images, and seed;
    # computed at the merge from the per-image counts a cached result holds
    bootstrap_resamples: int = field(default=1000, metadata=NOT_IN_KEY)
    bootstrap_seed: int = field(default=0, metadata=NOT_IN_KEY)

    RANGES = {
        "batch_size": AT_LEAST_1,
        "chunk_size": AT_LEAST_1,
        "max_new_tokens": AT_LEAST_1,
        "bootstrap_resamples": AT_LEAST_1,
        "bootstrap_seed": SEED,
    }

    def __post_init__(self) -> None:
        check_ranges(self)
        if self.engine not in ENGINES:
            raise ValueError(f"engine: {self.engine!r}; expected one of {sorted(ENGINES)}")
        if not self.models:
            raise ValueError(
                "models: at least one model to evaluate is needed (the first is the baseline; the "
                "pipeline names the run's base and trained model itself)"
            )
        names = [model.name for model in self.models]
        if len(set(names)) != len(names):
            raise ValueError(f"models: names must be unique, got {names}")
        if self.amber is None and self.zero_shot is None and not self.suite:
            raise ValueError("nothing to evaluate: set amber, zero_shot and/or suite")
        labels = [benchmark.label for benchmark in self.suite]
        if len(set(labels)) != len(labels):
            raise ValueError(f"suite: benchmark names must be unique, got {labels}")
