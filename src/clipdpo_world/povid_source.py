"""The world's stand-in for POVID's hallucination-injecting LLM: a rule-based rewriter of ground truth.

POVID (Sec. 3.1) has GPT-4V rewrite a ground-truth answer with plausible hallucinations. There is no
such LLM here, so the world injects them by rule from its exact ground truth (the pool folder's
truth.jsonl), the errors the paper's caption prompt (Appendix A.2, Table 6) lists:

- `partner`: an absent co-occurring partner named as well (error 1, "co-occurring objects, which are
  prone to appear in such scenarios but do not appear in the image");
- `count`: one object group's number changed (error 2, "the number of entities");
- `position`: one group moves to a free slot, or two groups swap slots (error 2, "the logical
  relationships between entities": the world's relations are positions);
- `colour`: one object group gets its kind's other colour (error 3, "attributes ... such as color").

A rewrite follows the prompt as the paper's Figure 3(a) shows GPT-4V doing it, several errors in one
answer: the co-occurring partner whenever one is absent, plus one of count, position or colour, drawn from
(seed, image id). Every image thus gets a change the scorer can see. Its reply is written as the LLM's
would be ("Answer: ..."), so it passes the same parsing and validation (generate/povid_inject.py).
The preferred answer is the world's correct caption; the prompt one of the world's caption prompts.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np

from clipdpo_world import language
from clipdpo_world.data import read_truth
from clipdpo_world.scene import COLOURS, KIND_COLOURS, PLURALS, SLOTS, ObjectGroup, Scene

INJECTIONS = ("partner", "count", "position", "colour")  # Table 6's error list
SCENE_ERRORS = INJECTIONS[1:]  # the errors that change a present group (one per rewrite)
# what a scorer can see in a world caption: "<a|two> <colour> <kind(s)> [<position phrase>]"
_NOUNS = "|".join(sorted({*KIND_COLOURS, *PLURALS.values()}, key=len, reverse=True))
_GROUP = re.compile(rf"\b(a|two) ({'|'.join(COLOURS)}) ({_NOUNS})\b(?: (on the left|in the middle|on the right))?")


def scene_from_truth(row: dict) -> Scene:
    """A truth.jsonl row (scene.Scene.to_dict) back as a Scene (its glyphs are not needed to caption it)."""
    groups = tuple(
        ObjectGroup(o["kind"], o["colour"], int(o["count"]), SLOTS.index(o["position"])) for o in row["objects"]
    )
    return Scene(row["image_id"], row["background"], groups, glyph_seed=0)


def image_rng(seed: int, image_id: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(image_id.encode())])


def _one_group_changed(scene: Scene, rng: np.random.Generator, change: Callable[[ObjectGroup], ObjectGroup]) -> Scene:
    """`scene` with one of its groups, drawn by `rng`, replaced by change(group)."""
    index = int(rng.integers(len(scene.objects)))
    groups = list(scene.objects)
    groups[index] = change(groups[index])
    return replace(scene, objects=tuple(groups))


def wrong_colour(scene: Scene, rng: np.random.Generator) -> Scene:
    return _one_group_changed(
        scene, rng, lambda g: replace(g, colour=next(c for c in KIND_COLOURS[g.kind] if c != g.colour))
    )


def wrong_count(scene: Scene, rng: np.random.Generator) -> Scene:
    return _one_group_changed(scene, rng, lambda g: replace(g, count=3 - g.count))


def wrong_position(scene: Scene, rng: np.random.Generator) -> Scene:
    """One group moved to a free slot; with every slot taken, two groups swap slots."""
    groups = list(scene.objects)
    free = [slot for slot in range(len(SLOTS)) if slot not in {g.slot for g in groups}]
    if free:
        index = int(rng.integers(len(groups)))
        groups[index] = replace(groups[index], slot=free[int(rng.integers(len(free)))])
    else:
        a, b = (int(i) for i in rng.choice(len(groups), size=2, replace=False))
        groups[a], groups[b] = replace(groups[a], slot=groups[b].slot), replace(groups[b], slot=groups[a].slot)
    return replace(scene, objects=tuple(sorted(groups, key=lambda g: g.slot)))


def inject(scene: Scene, kind: str, rng: np.random.Generator) -> str:
    """The caption with one hallucination of `kind`; the correct caption when `kind` cannot apply."""
    if kind == "partner":
        hallucinated = language.with_partner(scene, rng)
        return hallucinated[0] if hallucinated else language.caption(scene)
    return language.caption(_changed(scene, kind, rng))


def _changed(scene: Scene, kind: str, rng: np.random.Generator) -> Scene:
    changes = {"count": wrong_count, "colour": wrong_colour, "position": wrong_position}
    if kind not in changes:
        raise ValueError(f"injection kind {kind!r}; expected one of {INJECTIONS}")
    return changes[kind](scene, rng)


def rewrite(scene: Scene, rng: np.random.Generator) -> tuple[str, str]:
    """(the errors made, joined by "_and_": a counter name trackers such as MLflow accept; the hallucinated
    caption): one of count, position or colour, and the absent co-occurring partner whenever there is one."""
    error = SCENE_ERRORS[int(rng.integers(len(SCENE_ERRORS)))]
    changed = _changed(scene, error, rng)
    with_partner = language.with_partner(changed, rng)  # the change keeps the kinds, so the same partners
    if with_partner:
        return f"partner_and_{error}", with_partner[0]
    return error, language.caption(changed)


def visible(text: str) -> frozenset:
    """What the world's scorer can tell apart in a caption: its (number, colour, noun, position) groups."""
    return frozenset(_GROUP.findall(text.lower()))


class WorldRewriter:
    """The POVID source's rewriter on the world (clipdpo.generate.povid_source): ground truth from
    `<folder>/truth.jsonl` (the pool folder `ingest` read), replies injected by rule."""

    visible = staticmethod(visible)

    def __init__(self, folder: str, seed: int = 0):
        self.truth = read_truth(folder)
        self.truth_file = Path(folder, "truth.jsonl")
        self.seed = seed

    def fingerprint_bytes(self) -> bytes:
        return self.truth_file.read_bytes()

    def ground_truth(self, image_id: str) -> tuple[str, str, Scene] | None:
        """(prompt, preferred answer, scene) of an images-artifact id (the file name: `<truth id>.png`);
        None when the truth file lacks the image."""
        row = self.truth.get(image_id) or self.truth.get(image_id.rsplit(".", 1)[0])
        if row is None:
            return None
        scene = scene_from_truth(row)
        prompts = language.CAPTION_PROMPTS[:5]
        return prompts[zlib.crc32(image_id.encode()) % len(prompts)], language.caption(scene), scene

    def replies(self, items: list, images: dict[str, bytes]) -> list[tuple[str, str]]:
        """(errors made, the reply as an LLM would write it) per item (`items`: povid_source.Item)."""
        out = []
        for item in items:
            errors, caption = rewrite(item.context, image_rng(self.seed, item.image_id))
            out.append((errors, f"Answer: {caption}"))
        return out


def rewriter(cfg) -> WorldRewriter:
    """The POVID source's plugin entry (`rewriter: "clipdpo_world.povid_source:rewriter"`): ground truth from the
    pool folder in `cfg.ground_truth`, errors drawn with `cfg.seed`."""
    return WorldRewriter(cfg.ground_truth, seed=cfg.seed)
