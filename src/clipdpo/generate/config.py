"""Generate-stage config: the caption model pool, prompts, sampling, and the QA writer."""

from __future__ import annotations

from dataclasses import dataclass, field

from clipdpo.config import AT_LEAST_1, check_ranges
from clipdpo.engines import ModelSpec, Sampling
from clipdpo.generate.qa_parse import QA_PROMPT_TEMPLATE

# Five descriptive prompts (Sec. 4.1): different wording gives more diverse captions.
DEFAULT_PROMPTS = [
    "Describe this image in detail.",
    "Identify the setting and note any characters or objects, focusing on visible details.",
    "What is happening in this image? Describe the main subjects and what they are doing.",
    "Write a short paragraph describing the objects, their colors and their positions.",
    "Give a factual description of everything you can see in the picture.",
]


def _default_captioners() -> list[ModelSpec]:
    # The paper's pool is MobileVLM-v2 1.7B/3B (custom code, no vLLM support); the model being
    # trained is a valid generator too, and LLaVA-1.5 runs on both engines.
    return [ModelSpec(name="llava-1.5-7b", path="llava-hf/llava-1.5-7b-hf")]


@dataclass(frozen=True)
class QAConfig:
    enabled: bool = True
    model: ModelSpec = field(
        default_factory=lambda: ModelSpec(name="openhermes-2.5-mistral-7b", path="teknium/OpenHermes-2.5-Mistral-7B")
    )
    questions_per_image: int = 2
    sampling: Sampling = field(default_factory=lambda: Sampling(temperature=0.7, top_p=0.9, max_new_tokens=512))
    prompt_template: str = QA_PROMPT_TEMPLATE

    RANGES = {"questions_per_image": AT_LEAST_1}

    def __post_init__(self) -> None:
        check_ranges(self)


@dataclass(frozen=True)
class GenerateConfig:
    captioners: list[ModelSpec] = field(default_factory=_default_captioners)
    prompts: list[str] = field(default_factory=lambda: list(DEFAULT_PROMPTS))
    captions_per_model: int = 5  # spread over the prompts round-robin
    sampling: Sampling = field(default_factory=Sampling)
    batch_size: int = 8  # hf engine batch; vLLM schedules its own
    qa: QAConfig = field(default_factory=QAConfig)

    RANGES = {"captions_per_model": AT_LEAST_1, "batch_size": AT_LEAST_1}

    def __post_init__(self) -> None:
        check_ranges(self)
        if not self.captioners:
            raise ValueError("captioners: at least one caption model is needed")
        if not self.prompts:
            raise ValueError("prompts: at least one prompt is needed")
        names = [spec.name for spec in self.captioners]
        if len(set(names)) != len(names):
            raise ValueError(f"captioners: model names must be unique, got {names}")
