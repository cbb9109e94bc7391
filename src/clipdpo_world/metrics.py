"""CHAIR, Hal and Cover of world captions against exact ground truth (the build's self-checks).

The world's language is known, so a caption's object words are found by matching its words (plural
forms included) against the vocabulary; no tagger is needed. The evaluate stage computes AMBER's
own metrics with spaCy on the benchmark; these are for checking models before any stage runs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from clipdpo_world import language
from clipdpo_world.scene import BACKGROUND_NOUNS, PLURALS, Scene

_WORDS = {word: word for word in language.vocabulary()} | {plural: kind for kind, plural in PLURALS.items()}


def mentioned(caption: str) -> list[str]:
    """Vocabulary words of `caption`, in order, plurals as their singular."""
    return [_WORDS[w] for w in re.findall(r"[a-z]+", caption.lower()) if w in _WORDS]


def truth(scene: Scene) -> set[str]:
    return set(scene.kinds) | set(BACKGROUND_NOUNS[scene.background])


@dataclass(frozen=True)
class CaptionMetrics:
    chair: float  # % of object mentions not in the image
    hal: float  # % of captions with at least one such mention
    cover: float  # % of the image's objects mentioned
    captions: int

    def as_dict(self) -> dict:
        return {
            "chair": round(self.chair, 2),
            "hal": round(self.hal, 2),
            "cover": round(self.cover, 2),
            "captions": self.captions,
        }


def caption_metrics(scenes: list[Scene], captions: list[str]) -> CaptionMetrics:
    """AMBER's definitions over distinct words per caption (as AMBER counts a noun once per response)."""
    if len(scenes) != len(captions) or not captions:
        raise ValueError(f"caption_metrics: {len(scenes)} scenes and {len(captions)} captions; need equal, > 0")
    said_total = wrong_total = covered = truth_total = with_wrong = 0
    for scene, text in zip(scenes, captions):
        said, real = set(mentioned(text)), truth(scene)
        wrong = said - real
        said_total, wrong_total = said_total + len(said), wrong_total + len(wrong)
        covered, truth_total = covered + len(said & real), truth_total + len(real)
        with_wrong += bool(wrong)
    return CaptionMetrics(
        100 * wrong_total / max(said_total, 1),
        100 * with_wrong / len(captions),
        100 * covered / truth_total,
        len(captions),
    )
