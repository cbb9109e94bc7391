"""The world QA writer: a small chat model that reads an image's captions and writes questions with a right
and a wrong answer, the paper's instruction LLM (OpenHermes-2.5 in Sec. 4.1) for the world.

It is an add-on of a built world, cached apart from it: `<world root>/qa-writer-<key>/`, where the key
hashes this module, its config and the world's key, so adding or changing the writer never rebuilds a
world (this module is not one of build.WORLD_MODULES). Trained on demand from the world's ground truth:
the input is the generate stage's QA prompt (the world's PROMPT_TEMPLATE) over a few captions of
a training scene, each drawn with the errors the world LVLM makes (an absent partner named, a kind
swapped, a count wrong, a group left out); the target is `n` "Question: / Correct: / Wrong:" blocks that
are right by the scene's ground truth: existence (Yes/No, the absent partner among the "No"s), colour,
count and position. The writer can only read the captions, so it learns what most of them agree on.
Saved in Hugging Face format (LlamaForCausalLM + the world LVLM's kind of tokenizer and chat template),
so the generate stage loads it like any chat LLM on the hf engine.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from clipdpo.generate.qa_parse import QAItem
from clipdpo.world import language
from clipdpo.world.scene import KIND_COLOURS, KINDS, PLURALS, SLOTS, ObjectGroup, Scene

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
    steps: int = 400
    batch_size: int = 16
    learning_rate: float = 2e-3
    warmup_steps: int = 50
    train_scenes: int = 3000  # the world's training split (the images the CLIP and the LVLM learn from)
    captions: tuple[int, int] = (3, 8)  # captions per example, inclusive (the world's generate stage gives 6)
    questions: int = 2  # blocks per reply (QAConfig.questions_per_image, the paper's 2)
    partner_probability: float = 0.3  # the LVLM's own training bias (LvlmConfig.bias_fraction)
    swap_probability: float = 0.1  # one group's kind replaced by another kind
    count_probability: float = 0.05  # one group's count wrong
    drop_probability: float = 0.05  # one group left out
    check_scenes: int = 200  # held-out scenes of the self-check
    min_right: float = 0.7  # share of held-out questions that must parse and be right
    seed: int = 0


# -- questions and their truth ------------------------------------------------------------------------------


def colour_question(kind: str) -> str:
    return f"What colour is the {kind}?"


def count_question(kind: str) -> str:
    return f"How many {PLURALS[kind]} are there?"


def position_question(kind: str) -> str:
    return f"Where is the {kind}?"


def _existence(scene: Scene, rng: np.random.Generator) -> QAItem:
    """Half the time an absent kind (its present partner's when there is one: the hallucination to ask about)."""
    absent = scene.absent_partners or [k for k in KINDS if k not in scene.kinds]
    if rng.random() < 0.5:
        return QAItem(language.existence_question(absent[int(rng.integers(len(absent)))]), "No", "Yes")
    shown = scene.objects[int(rng.integers(len(scene.objects)))]
    return QAItem(language.existence_question(shown.kind), "Yes", "No")


def _attribute(scene: Scene, rng: np.random.Generator) -> QAItem:
    """Colour, count or position of one present group; the wrong answer is a plausible other value."""
    group = scene.objects[int(rng.integers(len(scene.objects)))]
    asked = ("colour", "count", "position")[int(rng.integers(3))]
    if asked == "colour":
        other = [c for c in KIND_COLOURS[group.kind] if c != group.colour][0]
        return QAItem(colour_question(group.kind), group.colour, other)
    if asked == "count":
        return QAItem(count_question(group.kind), NUMBER_ANSWERS[group.count], NUMBER_ANSWERS[3 - group.count])
    others = [slot for slot in range(len(SLOTS)) if slot != group.slot]
    wrong = others[int(rng.integers(len(others)))]
    return QAItem(position_question(group.kind), language.POSITION_PHRASES[group.position],
                  language.POSITION_PHRASES[SLOTS[wrong]])


def truth_items(scene: Scene, rng: np.random.Generator, n: int) -> list[QAItem]:
    """`n` questions right by the scene's ground truth: an existence question first, then attributes."""
    items = [_existence(scene, rng)]
    while len(items) < n:
        item = _attribute(scene, rng)
        if item.question not in {i.question for i in items} or len(scene.objects) * 3 < n:
            items.append(item)
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
    return (answers is not None and _norm(item.correct) in answers["right"]
            and _norm(item.wrong) in answers["wrong"])


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
    return qa_prompt(captions, cfg.questions), reply(truth_items(scene, rng, cfg.questions))
