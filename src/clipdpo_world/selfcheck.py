"""The world LLaVA's self-checks on held-out images, fixed before any method is measured on the world.

A world is only useful if its LLaVA behaves as LLaVA-1.5 does where the paper measures it: it answers Yes/No
questions (POPE's random split well, its adversarial split, the absent partners, worse), it hallucinates
enough in sampled descriptions for a method to unlearn, and every benchmark measures the model: a deliberately
damaged model (answers flipped, descriptions of another image) scores clearly worse than the base model.

Everything is scored by the evaluate stage's own functions (AMBER's counters, POPE's parser, the zero-shot
classifier) on the benchmark files the build wrote, so the checks measure what a run will measure. Answers are
the first token of greedy decoding, which is the whole answer for a model trained to stop after "Yes"/"No".
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from clipdpo.evaluate import amber
from clipdpo.evaluate.suite import questions
from clipdpo.evaluate.suite.pope import pope_counts, pope_from_counts
from clipdpo_world import benchmark, lvlm
from clipdpo_world.clip import WorldBuildError
from clipdpo_world.scene import Scene, render


@dataclass(frozen=True)
class Bars:
    """What a world LLaVA must reach (percentages and points); LLaVA-1.5-7B: POPE ~86, AMBER F1 74.7."""

    min_pope_random: float = 80.0  # accuracy on POPE's random split
    min_adversarial_gap: float = 3.0  # random minus adversarial accuracy: "yes" to absent partners
    min_amber_f1: float = 70.0  # AMBER's discriminative F1
    min_sampled_chair: float = 10.0  # enough hallucination left to unlearn (temperature 1.0)
    min_sampled_hal: float = 25.0
    min_zero_shot: float = 70.0  # zero-shot top-1 through captions, and no class at 0%
    min_damage: float = 10.0  # points by which a damaged model must score worse on every benchmark
    enforced: bool = True  # False: measured and recorded only (the tests' tiny worlds, too small to see)


def flipped(answer: str) -> str:
    """A damaged model's Yes/No answer: the opposite of what the model said."""
    return {"Yes": "No", "No": "Yes"}.get(answer, answer)


def shifted(texts: list[str]) -> list[str]:
    """A damaged model's descriptions: each image gets the one half the list away (captions of another image; the
    zero-shot folder is sorted by class, so a neighbour's would mostly be of the same class)."""
    half = len(texts) // 2
    return texts[half:] + texts[:half]


@torch.no_grad()
def first_tokens(model, processor, scenes: list[Scene], questions: list[str], batch_size: int = 64) -> list[str]:
    """The first greedy token of the model's answer to each (scene, question), decoded and stripped."""
    tokenizer = processor.tokenizer
    prompts: dict[str, list[int]] = {}
    out: list[str] = []
    for start in range(0, len(questions), batch_size):
        ids = [prompts.setdefault(q, lvlm.prompt_ids(processor, q)) for q in questions[start : start + batch_size]]
        width = max(len(row) for row in ids)
        input_ids = torch.full((len(ids), width), tokenizer.pad_token_id)
        mask = torch.zeros_like(input_ids)
        for row, tokens in enumerate(ids):  # left-padded: the answer's first token is predicted at the end
            input_ids[row, width - len(tokens) :] = torch.tensor(tokens)
            mask[row, width - len(tokens) :] = 1
        chunk = scenes[start : start + batch_size]
        pixels = processor.image_processor([render(s) for s in chunk], return_tensors="pt")["pixel_values"]
        logits = model(input_ids=input_ids, attention_mask=mask, pixel_values=pixels).logits[:, -1]
        out.extend(tokenizer.decode([int(t)]).strip() for t in logits.argmax(dim=-1))
    return out


def pope_accuracy(scenes: list[Scene], seed: int, answers_of) -> dict[str, float]:
    """POPE accuracy (%) per split of the world's POPE rows, asked as the world's evaluate config has the suite
    ask them; `answers_of(scenes, prompts)` answers."""
    by_image = {f"{s.image_id}.png": s for s in scenes}
    rows = benchmark.pope_rows(scenes, seed)
    asked = benchmark.config("")["suite"][0].get("instruction")  # as the world's evaluate config asks them
    answers = answers_of([by_image[r["image"]] for r in rows], [questions.prompt("pope", r, asked) for r in rows])
    out = {}
    for split in sorted({r["category"] for r in rows}):
        picked = [(r["answer"], a) for r, a in zip(rows, answers) if r["category"] == split]
        counts = pope_counts([label for label, _ in picked], [answer for _, answer in picked])
        out[split] = round(100 * pope_from_counts(**counts)["accuracy"], 2)
    return out


def amber_f1(amber_root: str, scenes: list[Scene], seed: int, answers_of) -> float:
    """AMBER's discriminative F1 ("No" positive) of the answers to the benchmark's discriminative queries (the
    benchmark written under `amber_root` from these scenes and seed)."""
    data = amber.load(amber_root)
    _, queries = benchmark.amber_files(scenes, seed)
    queries = [q for q in queries if not amber.is_generative(data, q["id"])]
    images = [scenes[int(q["image"].split("_")[1].split(".")[0]) - 1] for q in queries]
    answers = answers_of(images, [q["query"] for q in queries])
    result = amber.evaluate(data, dict(zip((q["id"] for q in queries), answers)), None, evaluation_type="d")
    return float(result["discriminative"]["f1"])


def zero_shot_top1(bench_root: str, clip_folder: str, scenes: list[Scene], describe) -> dict:
    """Zero-shot top-1 through captions on the benchmark's zero-shot folder, classified by the evaluate stage's
    own functions with the world CLIP's text tower; `describe(scenes, prompt)` gives the model's captions.
    Returns top1, per_class_top1 and the damaged model's top1 (each image given another image's caption)."""
    from clipdpo.evaluate.config import TextEncoderConfig, ZeroShotConfig, ZeroShotDataset
    from clipdpo.evaluate.zeroshot import TextEncoder, class_embeddings, evaluate_dataset, load_dataset
    from clipdpo.storage import Storage
    from clipdpo_world import clip

    section = benchmark.config(bench_root)["zero_shot"]
    config = ZeroShotConfig(
        prompt=section["prompt"], class_template=section["class_template"], class_pooling=section["class_pooling"]
    )
    items, classes = load_dataset(Storage(), ZeroShotDataset(**section["datasets"][0]), config.prompt)
    by_name = {f"{s.image_id}.png": s for s in scenes}
    captions = describe([by_name[item.image.rsplit("/", 1)[-1]] for item in items], config.prompt)
    encoder = TextEncoder(TextEncoderConfig(**clip.scorer_config(clip_folder)))
    embedded = class_embeddings(classes, encoder, config)

    def scored(texts: list[str]) -> dict:
        return evaluate_dataset(items, classes, embedded, {i.id: t for i, t in zip(items, texts)}, encoder)

    base = scored(captions)
    return {
        "top1": round(base["top1"], 2),
        "per_class_top1": {name: round(value, 1) for name, value in base["per_class_top1"].items()},
        "damaged_top1": round(scored(shifted(captions))["top1"], 2),
    }


def measure(model, processor, scenes: list[Scene], seed: int, paths: dict[str, str], sampled: list[str]) -> dict:
    """Every self-check's measurement: POPE per split, AMBER F1, zero-shot, and each benchmark's damaged score.
    `paths`: the written benchmark ("benchmarks") and the world CLIP ("clip"); `sampled`: the model's sampled
    descriptions of `scenes` (temperature 1.0), one per scene."""
    from clipdpo_world import language, metrics

    def answers(images: list[Scene], questions: list[str]) -> list[str]:
        return first_tokens(model, processor, images, questions)

    def damaged(images: list[Scene], questions: list[str]) -> list[str]:
        return [flipped(a) for a in answers(images, questions)]

    amber_root = f"{paths['benchmarks']}/AMBER/data"
    pope, pope_damaged = pope_accuracy(scenes, seed, answers), pope_accuracy(scenes, seed, damaged)
    described = metrics.caption_metrics(scenes, sampled)
    return {
        "pope": pope,
        "pope_damaged": pope_damaged,
        "amber_f1": amber_f1(amber_root, scenes, seed, answers),
        "amber_f1_damaged": amber_f1(amber_root, scenes, seed, damaged),
        "sampled_chair": round(described.chair, 2),
        "sampled_hal": round(described.hal, 2),
        "damaged_chair": round(metrics.caption_metrics(scenes, shifted(sampled)).chair, 2),
        "zero_shot": zero_shot_top1(
            paths["benchmarks"],
            paths["clip"],
            scenes,
            lambda images, prompt: lvlm.describe(model, processor, images, prompt=prompt),
        ),
        "bars": asdict(Bars()),
        "prompt": language.MAIN_OBJECT_PROMPT,
    }


def failures(measured: dict, bars: Bars = Bars()) -> list[str]:
    """Each bar the measurements miss, as a sentence; empty when the world LLaVA passes."""
    pope, zero = measured["pope"], measured["zero_shot"]
    gap = pope["random"] - pope["adversarial"]
    checks = [
        (pope["random"] >= bars.min_pope_random, f"POPE random accuracy {pope['random']:.1f} < {bars.min_pope_random}"),
        (
            gap >= bars.min_adversarial_gap,
            f"POPE adversarial only {gap:.1f} points below random (< {bars.min_adversarial_gap})",
        ),
        (
            measured["amber_f1"] >= bars.min_amber_f1,
            f"AMBER discriminative F1 {measured['amber_f1']:.1f} < {bars.min_amber_f1}",
        ),
        (
            measured["sampled_chair"] >= bars.min_sampled_chair,
            f"sampled CHAIR {measured['sampled_chair']:.1f} < {bars.min_sampled_chair}",
        ),
        (
            measured["sampled_hal"] >= bars.min_sampled_hal,
            f"sampled Hal {measured['sampled_hal']:.1f} < {bars.min_sampled_hal}",
        ),
        (zero["top1"] >= bars.min_zero_shot, f"zero-shot top-1 {zero['top1']:.1f} < {bars.min_zero_shot}"),
        (
            min(zero["per_class_top1"].values()) > 0,
            f"zero-shot classes at 0%: {[k for k, v in zero['per_class_top1'].items() if v == 0]}",
        ),
    ]
    damage = {
        "POPE random": pope["random"] - measured["pope_damaged"]["random"],
        "AMBER F1": measured["amber_f1"] - measured["amber_f1_damaged"],
        "CHAIR": measured["damaged_chair"] - measured["sampled_chair"],
        "zero-shot": zero["top1"] - zero["damaged_top1"],
    }
    checks += [
        (drop >= bars.min_damage, f"a damaged model scores only {drop:.1f} worse on {name} (< {bars.min_damage})")
        for name, drop in damage.items()
    ]
    return [message for ok, message in checks if not ok]


def require(measured: dict, bars: Bars = Bars()) -> None:
    """Stop the build, naming every bar the world LLaVA misses."""
    missed = failures(measured, bars)
    if missed and bars.enforced:
        raise WorldBuildError(
            "world LVLM fails its self-checks (clipdpo_world.selfcheck.Bars): "
            + "; ".join(missed)
            + " (a seed that misses them needs more LvlmConfig.steps, or another seed)"
        )
