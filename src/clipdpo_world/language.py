"""The world's language: captions (correct, or with a hallucinated partner) and questions with answers.

One caption grammar: "<opening> <group>, <group> and <group>." where a group is
"a red ball on the left" / "two black cats in the middle". The opening names the background:
"a picture of" (plain), "a field with" (field), "a page of text with" (page). Every noun that
AMBER counts (the kinds, "field", "page", "text") is in `vocabulary()`; "picture" and the
position words are nouns too but outside that vocabulary, so AMBER ignores them.
"""

from __future__ import annotations

import numpy as np

from clipdpo_world.scene import BACKGROUND_NOUNS, KIND_COLOURS, KINDS, PLURALS, SLOTS, ObjectGroup, Scene

OPENINGS = {"plain": "a picture of", "field": "a field with", "page": "a page of text with"}
POSITION_PHRASES = {"left": "on the left", "middle": "in the middle", "right": "on the right"}
NUMBER_WORDS = {1: "a", 2: "two"}

# The paper's caption prompts (the generate stage's defaults) and AMBER's own query: all ask for the
# same description in this world.
CAPTION_PROMPTS = (
    "Describe this image in detail.",
    "Identify the setting and note any characters or objects, focusing on visible details.",
    "What is happening in this image? Describe the main subjects and what they are doing.",
    "Write a short paragraph describing the objects, their colors and their positions.",
    "Give a factual description of everything you can see in the picture.",
    "Describe this image.",
)
# The evaluate stage's zero-shot prompt: answered with the main (left-most) object.
MAIN_OBJECT_PROMPT = "What is the main object in this image? Describe it in one short sentence."


def vocabulary() -> list[str]:
    """Every noun the benchmark scores: object kinds and background nouns."""
    return list(KINDS) + sorted({noun for nouns in BACKGROUND_NOUNS.values() for noun in nouns})


def group_phrase(group: ObjectGroup, with_position: bool = True) -> str:
    noun = group.kind if group.count == 1 else PLURALS[group.kind]
    phrase = f"{NUMBER_WORDS[group.count]} {group.colour} {noun}"
    return f"{phrase} {POSITION_PHRASES[group.position]}" if with_position else phrase


def _join(phrases: list[str]) -> str:
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


def caption(scene: Scene) -> str:
    """The correct caption: every group, left to right, nothing else."""
    return f"{OPENINGS[scene.background]} {_join([group_phrase(g) for g in scene.objects])}."


def with_partner(scene: Scene, rng: np.random.Generator) -> tuple[str, str] | None:
    """The caption with one absent partner named as well (in a free slot, else with no position);
    returns (caption, hallucinated kind), or None when the scene has no absent partner."""
    partners = scene.absent_partners
    if not partners:
        return None
    kind = partners[int(rng.integers(len(partners)))]
    free = [slot for slot in range(len(SLOTS)) if slot not in {g.slot for g in scene.objects}]
    phrases = [(g.slot, group_phrase(g)) for g in scene.objects]
    if free:
        slot = free[int(rng.integers(len(free)))]
        phrases.append((slot, group_phrase(ObjectGroup(kind, KIND_COLOURS[kind][0], 1, slot))))
    else:
        phrases.append((len(SLOTS), group_phrase(ObjectGroup(kind, KIND_COLOURS[kind][0], 1, 0), with_position=False)))
    text = _join([p for _, p in sorted(phrases, key=lambda item: item[0])])
    return f"{OPENINGS[scene.background]} {text}.", kind


def main_object_answer(scene: Scene) -> str:
    return f"{group_phrase(scene.objects[0], with_position=False)}."


def existence_question(kind: str) -> str:
    return f"Is there a {kind} in this image?"


def colour_question(kind: str, colour: str) -> str:
    return f"Is the {kind} {colour}?"


def number_question(kind: str) -> str:
    return f"Are there two {PLURALS[kind]} in this image?"


def relation_question(left: str, right: str) -> str:
    return f"Is the {left} to the left of the {right}?"


def questions(scene: Scene, rng: np.random.Generator) -> list[tuple[str, str, str]]:
    """(type, question, "Yes"/"No") about the scene: existence of a present kind and of an absent one
    (its partner when it has one), colour, number and left-of relation, balanced Yes/No."""
    out = []
    present = scene.kinds
    shown = scene.objects[int(rng.integers(len(scene.objects)))]
    out.append(("existence", existence_question(shown.kind), "Yes"))
    absent = scene.absent_partners or [k for k in KINDS if k not in present]
    out.append(("existence", existence_question(absent[int(rng.integers(len(absent)))]), "No"))
    other_colour = [c for c in KIND_COLOURS[shown.kind] if c != shown.colour][0]
    ask_true = rng.random() < 0.5
    out.append(
        (
            "attribute-state",
            colour_question(shown.kind, shown.colour if ask_true else other_colour),
            "Yes" if ask_true else "No",
        )
    )
    out.append(("attribute-number", number_question(shown.kind), "Yes" if shown.count == 2 else "No"))
    if len(scene.objects) >= 2:
        a, b = (scene.objects[i] for i in sorted(rng.choice(len(scene.objects), size=2, replace=False)))
        ask_true = rng.random() < 0.5
        out.append(
            (
                "relation",
                relation_question(a.kind, b.kind) if ask_true else relation_question(b.kind, a.kind),
                "Yes" if ask_true else "No",
            )
        )
    return out


def category_descriptions(per_category: int = 10, seed: int = 12345) -> dict[str, list[str]]:
    """Ten descriptions per image category of Sec. 4.2, in the world's language: the correct captions of
    the first scenes of each category of a fixed draw. The score stage's prototypes come from these."""
    from clipdpo_world.scene import sample_scene

    out: dict[str, list[str]] = {"text": [], "people": [], "objects": [], "scenes": []}
    index = 0
    while any(len(texts) < per_category for texts in out.values()):
        scene = sample_scene(seed, "train", index)
        if len(out[scene.category]) < per_category:
            out[scene.category].append(caption(scene))
        index += 1
    return out
