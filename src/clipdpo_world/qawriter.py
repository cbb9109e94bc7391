"""The world QA writer: a small chat model that reads an image's captions and writes questions with a right
and a wrong answer, the paper's instruction LLM (OpenHermes-2.5 in Sec. 4.1) for the world.

It is an add-on of a built world, cached apart from it: `<world root>/qa-writer-<key>/`, where the key
hashes this module, its config and the world's key, so adding or changing the writer never rebuilds a
world (this module is not one of build.WORLD_MODULES). Trained on demand from the world's ground truth:
the input is the generate stage's QA prompt (the world's PROMPT_TEMPLATE) over a few captions of
a training scene, each drawn with the errors the world LVLM makes (an absent partner named, a kind
swapped, a count wrong, a group left out); the target is `n` "Question: / Correct: / Wrong:" blocks.
Which questions: a rule over what most captions say (`truth_items`): is the co-occurring partner of the
first object there (the hallucination the paper's QA pairs catch), then that object's colour, position or
count (by the background the captions name). The answers: the scene's ground truth. A target the captions
determine is one a small model can learn (random questions taught it to write the most frequent pair
whatever it read); answers by the truth teach it to trust the majority over a caption naming an absent
partner. The self-check scores its replies to held-out scenes' noisy captions by their truth.
Saved in Hugging Face format (LlamaForCausalLM + the world LVLM's kind of tokenizer and chat template),
so the generate stage loads it like any chat LLM on the hf engine.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

import numpy as np

from clipdpo.generate.qa_parse import QAItem
from clipdpo_world import language
from clipdpo_world.scene import KIND_COLOURS, KINDS, PARTNER, PLURALS, SLOTS, ObjectGroup, Scene

NUMBER_ANSWERS = {1: "one", 2: "two"}
# The world's QA prompt (the generate stage's QAConfig.prompt_template for the world): the paper's template is
# written for an instruction LLM that reads instructions; this writer knows one task, and the paper's 100 tokens
# of instructions would double the sequences it trains on (its cost) and bury the captions it has to read.
PROMPT_TEMPLATE = "Captions:\n{captions}\nWrite {n} questions with a correct and a wrong answer."


@dataclass(frozen=True)
class QAWriterConfig:
    """The writer's model, training and self-check; part of its cache key."""

    hidden: int = 128
    layers: int = 2
    heads: int = 4
    tie_embeddings: bool = True  # copying a word from the captions is the task: one embedding in and out
    vocab_size: int = 700
    # Measured on world 0: loss 0.25 by step 500 (the reply's form), then the content; 2,500 steps left 59.5% of
    # held-out questions right (with position questions), 3,500 69.8% (loss 0.05, still falling; the misses were
    # the priors: "No", a kind's first colour, "one"): the writer reads the captions late in training.
    steps: int = 4500
    batch_size: int = 8
    learning_rate: float = 3e-3
    warmup_steps: int = 100
    train_scenes: int = 3000  # the world's training split (the images the CLIP and the LVLM learn from)
    captions: tuple[int, int] = (3, 6)  # captions per example, inclusive (the world's generate stage gives 6)
    questions: int = 2  # blocks per reply (QAConfig.questions_per_image, the paper's 2)
    partner_probability: float = 0.4  # the LVLM's own training bias (LvlmConfig.bias_fraction)
    swap_probability: float = 0.1  # one group's kind replaced by another kind
    count_probability: float = 0.05  # one group's count wrong
    drop_probability: float = 0.05  # one group left out
    check_scenes: int = 200  # held-out scenes of the self-check
    min_right: float = 0.7  # share of held-out questions that must parse and be right
    seed: int = 0
    # The world seed whose training (and held-out) scenes the writer learns from: one writer serves every world,
    # as the paper's LLM knows nothing of the images it writes about. The world's kinds, partners, colours and
    # wording are the same in every seed (scene.py, language.py); only which scenes differ.
    source_world: int = 0


# -- questions and their truth ------------------------------------------------------------------------------


def colour_question(kind: str) -> str:
    return f"What colour is the {kind}?"


def count_question(kind: str) -> str:
    return f"How many {PLURALS[kind]} are there?"


def position_question(kind: str) -> str:
    return f"Where is the {kind}?"


# The attribute asked first for each background (the captions' opening names it): which question an image gets
# is a function of what its captions say, so a small model can learn it; a random pick could not be learnt.
# Position comes last: the writer did not learn it in its budget (world 0, 2,500 steps: 6 of 64 position answers
# right, against 50 of 80 colours and 50 of 61 counts; the phrase follows its object in a caption, colour and
# count come before it or in the noun).
FIRST_ATTRIBUTE = {"plain": "colour", "field": "count", "page": "colour"}
ATTRIBUTES = ("colour", "count", "position")
_NAMED = re.compile(r"\b(" + "|".join(sorted({*KINDS, *PLURALS.values()}, key=len, reverse=True)) + r")\b")
_SINGULAR = {PLURALS[kind]: kind for kind in KINDS} | {kind: kind for kind in KINDS}


@dataclass(frozen=True)
class Reading:
    """What most of an image's captions say, as far as the writer's rule needs it."""

    anchor: str | None  # the kind the questions are about (`reading`)
    background: str  # by majority of the captions' openings ("plain" when none is recognised)


def kinds_named(caption: str) -> list[str]:
    """The object kinds a caption names, in order of mention (singular or plural)."""
    return [_SINGULAR[word] for word in _NAMED.findall(caption.lower())]


def reading(captions: list[str]) -> Reading:
    """The majority reading of `captions`. The anchor is the kind with a partner that most captions name, ties
    to the earlier kind in KINDS; a kind without one (a man) only when no kind with a partner is named.

    By what is named and how often, not where: a rule over word positions ("the first object of most
    captions") was not learnt in 1,000 steps (the writer asked about a wrong kind nearly every time), while
    which words occur and how often is what attention reads directly. A partner named by a minority of
    captions (the LVLM's hallucination) loses to the object most captions name."""
    named = Counter(kind for c in captions for kind in set(kinds_named(c)))
    ranked = sorted(named, key=lambda kind: (kind not in PARTNER, -named[kind], KINDS.index(kind)))
    openings = Counter(
        bg for c in captions for bg, opening in language.OPENINGS.items() if c.lower().startswith(opening)
    )
    return Reading(ranked[0] if ranked else None, openings.most_common(1)[0][0] if openings else "plain")


def _group(scene: Scene, anchor: str | None) -> ObjectGroup:
    """The scene's group the attribute questions ask about: the anchor's, else its partner's, else the first (a
    majority that names an absent kind first is rare; the question must still have a true answer)."""
    if anchor is None:  # no kind named (no kind is "", so neither lookup below could find one)
        return scene.objects[0]
    by_kind = {g.kind: g for g in scene.objects}
    return by_kind.get(anchor) or by_kind.get(PARTNER.get(anchor, "")) or scene.objects[0]


def _attribute(group: ObjectGroup, asked: str) -> QAItem:
    """Colour, count or position of one present group; the wrong answer a fixed other value (learnable by rule)."""
    if asked == "colour":
        other = [c for c in KIND_COLOURS[group.kind] if c != group.colour][0]
        return QAItem(colour_question(group.kind), group.colour, other)
    if asked == "count":
        return QAItem(count_question(group.kind), NUMBER_ANSWERS[group.count], NUMBER_ANSWERS[3 - group.count])
    if asked == "position":
        return QAItem(
            position_question(group.kind),
            language.POSITION_PHRASES[group.position],
            language.POSITION_PHRASES[SLOTS[(group.slot + 1) % len(SLOTS)]],
        )
    raise ValueError(f"attribute {asked!r}: expected one of {ATTRIBUTES}")


def truth_items(scene: Scene, captions: list[str], n: int) -> list[QAItem]:
    """Up to `n` questions chosen by rule from the captions' majority reading, answered by the scene's truth.

    First an attribute of the anchor's group (the background's: plain and page colour, field count), then
    is the anchor's co-occurring partner there (the object an LVLM hallucinates; "No" when absent)? In this order
    the writer names the anchor before it needs its partner (two short steps to learn, not one long one).
    A caption naming the absent partner does not change the answer: the writer learns to trust the majority.
    """
    read = reading(captions)
    first = ATTRIBUTES.index(FIRST_ATTRIBUTE[read.background])
    group = _group(scene, read.anchor)
    items = [_attribute(group, ATTRIBUTES[(first + i) % len(ATTRIBUTES)]) for i in range(len(ATTRIBUTES))]
    if read.anchor in PARTNER:
        partner = PARTNER[read.anchor]
        there = partner in scene.kinds
        items.insert(
            1, QAItem(language.existence_question(partner), "Yes" if there else "No", "No" if there else "Yes")
        )
    return items[:n]


def reply(items: list[QAItem]) -> str:
    return "\n".join(f"Question: {i.question}\nCorrect: {i.correct}\nWrong: {i.wrong}" for i in items)


def _answers(scene: Scene, question: str) -> dict[str, set[str]] | None:
    """{"right": ..., "wrong": ...} answer sets for a question of the writer's forms, None for another form."""
    q = question.strip()
    for kind in KINDS:
        group = next((g for g in scene.objects if g.kind == kind), None)
        if q == language.existence_question(kind):
            return {"right": {"yes"}, "wrong": {"no"}} if group else {"right": {"no"}, "wrong": {"yes"}}
        if group is None:
            continue
        if q == colour_question(kind):
            return {"right": {group.colour}, "wrong": set(KIND_COLOURS[kind]) - {group.colour}}
        if q == count_question(kind):
            return {"right": {NUMBER_ANSWERS[group.count]}, "wrong": {NUMBER_ANSWERS[3 - group.count]}}
        if q == position_question(kind):
            right = language.POSITION_PHRASES[group.position]
            return {"right": {right}, "wrong": set(language.POSITION_PHRASES.values()) - {right}}
    return None


def is_right(scene: Scene, item: QAItem) -> bool:
    """The question is one the world can answer, its correct answer is true and its wrong answer false."""
    answers = _answers(scene, item.question)
    return answers is not None and _norm(item.correct) in answers["right"] and _norm(item.wrong) in answers["wrong"]


def _norm(answer: str) -> str:
    return answer.strip().rstrip(".").lower()


# -- inputs: captions with the LVLM's errors ----------------------------------------------------------------


def noisy_caption(scene: Scene, rng: np.random.Generator, cfg: QAWriterConfig) -> str:
    """One caption of the scene with, at the config's rates, one of the errors a sampled world LVLM makes."""
    draw = rng.random()
    if draw < cfg.partner_probability and (biased := language.with_partner(scene, rng)):
        return biased[0]
    groups = list(scene.objects)
    pick = int(rng.integers(len(groups)))
    draw -= cfg.partner_probability
    if 0 <= draw < cfg.swap_probability:
        kind = [k for k in KINDS if k not in scene.kinds][int(rng.integers(len(KINDS) - len(groups)))]
        groups[pick] = ObjectGroup(kind, KIND_COLOURS[kind][0], groups[pick].count, groups[pick].slot)
    elif 0 <= draw - cfg.swap_probability < cfg.count_probability:
        groups[pick] = ObjectGroup(groups[pick].kind, groups[pick].colour, 3 - groups[pick].count, groups[pick].slot)
    elif 0 <= draw - cfg.swap_probability - cfg.count_probability < cfg.drop_probability and len(groups) > 1:
        del groups[pick]
    return language.caption(Scene(scene.image_id, scene.background, tuple(groups), scene.glyph_seed))


def qa_prompt(captions: list[str], n: int, template: str = PROMPT_TEMPLATE) -> str:
    """The generate stage's QA prompt for one image (generate.shard.qa_rows formats it this way)."""
    return template.format(captions="\n".join(f"{i + 1}. {t}" for i, t in enumerate(captions)), n=n)


def example(scene: Scene, rng: np.random.Generator, cfg: QAWriterConfig) -> tuple[str, str]:
    """(prompt, reply) for one scene: noisy captions in, ground-truth questions out."""
    k = int(rng.integers(cfg.captions[0], cfg.captions[1] + 1))
    captions = [noisy_caption(scene, rng, cfg) for _ in range(k)]
    return qa_prompt(captions, cfg.questions), reply(truth_items(scene, captions, cfg.questions))
