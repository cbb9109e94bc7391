"""POVID's text dispreferences through the generate stage's engines: ground-truth answers rewritten by an
LLM (vLLM on a cluster, transformers locally) with the paper's prompts, then validated (povid_inject.py).

With an image the request goes to a vision-language engine (`caption`), as the paper's GPT-4V sees the
image; without, to a text-only LLM (`chat`), which sees the question and answer only. The kept results
become pairs: the ground-truth answer chosen, the injected one rejected.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

from PIL import Image

from clipdpo.engines import Engine, ImageRequest, Sampling
from clipdpo.generate.povid_inject import InjectionCounts, injection_prompt, validate_all


@dataclass(frozen=True)
class GroundTruth:
    question: str
    answer: str  # the preferred response
    kind: str = "caption"  # caption | reasoning: which Table 6 prompt
    image: Image.Image | None = None


def replies(engine: Engine, items: list[GroundTruth], sampling: Sampling) -> list[str]:
    """The engine's raw reply to each item's injection prompt; one engine call per modality."""
    prompts = [injection_prompt(item.kind, item.question, item.answer) for item in items]
    out = [""] * len(items)
    seen = [k for k, item in enumerate(items) if item.image is not None]
    if seen:
        requests = [
            ImageRequest(image, prompts[k], n=1, seed=sampling.seed + k)
            for k in seen
            if (image := items[k].image) is not None
        ]
        for k, outputs in zip(seen, engine.caption(requests, sampling)):
            out[k] = outputs[0]
    unseen = [k for k, item in enumerate(items) if item.image is None]
    if unseen:
        for k, reply in zip(unseen, engine.chat([prompts[k] for k in unseen], sampling)):
            out[k] = reply
    return out


def rewrite(
    engine: Engine, items: list[GroundTruth], sampling: Sampling, visible: Callable[[str], Iterable] | None = None
) -> tuple[list[str | None], InjectionCounts]:
    """Each item's injected answer (None where dropped) and the counts."""
    return validate_all(replies(engine, items, sampling), [item.answer for item in items], visible)
