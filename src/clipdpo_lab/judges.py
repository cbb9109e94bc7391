"""`python -m clipdpo_lab judges --world N`: how well each judge ranks the world LLaVA's own captions.

On the world's held-out images the LLaVA samples `samples` captions per image (temperature 1, the generate stage's
prompts in turn); the world's ground truth says which name an absent object (hallucinate). Every pair of one
image's captions, one clean and one hallucinating, is a test the judge can pass: ranked right when the clean
caption scores higher. Beside that, the pairs whose scores differ by more than the filter's margin (the pairs the
filter could keep) and, of those, the share with the clean caption on top (what DPO would learn from). Each judge
scores through the score stage's own code (ClipScorer and its noun-level scoring) with the config that
`clipdpo_lab run --judge` gives the score stage, so the table measures the judges the runs train with.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from clipdpo_world.judges import JUDGES


@dataclass(frozen=True)
class RankingConfig:
    """What the ranking test samples and counts."""

    samples: int = 6  # captions per held-out image (the world's samples_per_image)
    temperature: float = 1.0  # the generate stage's sampling
    seed: int = 0
    margin: float = 2.0  # FilterConfig.pair_min_margin: a pair the filter could keep differs by more


@dataclass(frozen=True)
class Ranking:
    """One judge's clean-vs-hallucinating pairs: how many, how many ranked right, how many over the margin and how
    many of those with the clean caption on top."""

    pairs: int
    right: int
    over_margin: int
    over_margin_right: int
    images: int  # images with at least one such pair

    def as_dict(self) -> dict:
        def percent(part: int, whole: int) -> float | None:
            return round(100 * part / whole, 1) if whole else None

        return {
            **asdict(self),
            "ranked_right": percent(self.right, self.pairs),
            "clean_chosen_over_margin": percent(self.over_margin_right, self.over_margin),
        }


def rank_pairs(scores: list[np.ndarray], hallucinating: list[np.ndarray], margin: float) -> Ranking:
    """Count every (clean, hallucinating) pair of captions of one image (`scores[i]`, `hallucinating[i]`: image i's
    captions' scores and whether each hallucinates). A tie is not ranked right; over the margin means the score
    difference exceeds it (the filter's rule: |a - b| > margin)."""
    pairs = right = over = over_right = images = 0
    for image_scores, wrong in zip(scores, hallucinating):
        wrong = np.asarray(wrong, dtype=bool)
        clean, bad = np.asarray(image_scores)[~wrong], np.asarray(image_scores)[wrong]
        diff = (clean[:, None] - bad[None, :]).ravel().astype(np.float64)
        if not len(diff):
            continue
        images += 1
        pairs, right = pairs + len(diff), right + int((diff > 0).sum())
        kept = np.abs(diff) > margin
        over, over_right = over + int(kept.sum()), over_right + int((diff[kept] > 0).sum())
    return Ranking(pairs=pairs, right=right, over_margin=over, over_margin_right=over_right, images=images)


def hallucinates(scene, caption: str) -> bool:
    """Whether `caption` names an object word the scene does not hold (the world's exact CHAIR rule)."""
    from clipdpo_world import metrics

    return bool(set(metrics.mentioned(caption)) - metrics.truth(scene))


def sample_captions(model_dir: str, scenes: list, cfg: RankingConfig) -> list[list[str]]:
    """`cfg.samples` captions per scene from the LLaVA in `model_dir`, sample k with generate's prompt k mod 5."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from clipdpo_world import language, lvlm

    model = AutoModelForImageTextToText.from_pretrained(model_dir).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    prompts = language.CAPTION_PROMPTS[:5]
    per_sample = [
        lvlm.describe(model, processor, scenes, prompts[k % len(prompts)], cfg.temperature, seed=cfg.seed + k)
        for k in range(cfg.samples)
    ]
    return [list(captions) for captions in zip(*per_sample)]


def judge_scores(score_config: dict, images: list, captions: list[list[str]]) -> list[np.ndarray]:
    """Each image's captions scored by the judge of `score_config` (a score stage config), through the score
    stage's code: the scorer's scale, and its noun-level mixing when the config turns it on."""
    from clipdpo import config as config_lib
    from clipdpo.score.scorer import ClipScorer, ScorerConfig
    from clipdpo.score.shard import caption_scores

    scorer = ClipScorer(config_lib.from_dict(ScorerConfig, score_config))
    image_emb = scorer.encode_images(images)
    flat = [text for texts in captions for text in texts]
    rows = np.repeat(np.arange(len(captions)), [len(texts) for texts in captions])
    unique = sorted(set(flat))
    text_emb = scorer.encode_texts(unique)
    index = {text: i for i, text in enumerate(unique)}
    cosines = np.einsum("ij,ij->i", image_emb[rows], text_emb[[index[text] for text in flat]])
    scores = caption_scores(scorer, list(flat), rows, image_emb, scorer.scale(cosines))
    return np.split(np.asarray(scores, dtype=np.float64), np.cumsum([len(texts) for texts in captions])[:-1])


def cached_captions(path: str, lvlm_dir: str, scenes: list, cfg: RankingConfig) -> list[list[str]]:
    """sample_captions, kept in `path` (JSON) when given: the judges can be measured in several runs on one
    sample (sampling is the slow part; it is seeded, so a rerun would give the same captions anyway)."""
    key = {"lvlm": str(Path(lvlm_dir).resolve()), "images": len(scenes), **asdict(cfg)}
    if path and Path(path).exists():
        saved = json.loads(Path(path).read_text())
        if saved["key"] == key:
            return saved["captions"]
    captions = sample_captions(lvlm_dir, scenes, cfg)
    if path:
        Path(path).write_text(json.dumps({"key": key, "captions": captions}))
    return captions


def measure(score_configs: dict[str, dict], scenes: list, captions: list[list[str]], cfg: RankingConfig):
    """judge -> Ranking of `captions` (per scene) on `scenes` (the held-out images); also the captions' counts."""
    from clipdpo_world.scene import render

    wrong = [np.array([hallucinates(scene, text) for text in texts]) for scene, texts in zip(scenes, captions)]
    images = [render(scene) for scene in scenes]
    table = {
        judge: rank_pairs(judge_scores(config, images, captions), wrong, cfg.margin)
        for judge, config in score_configs.items()
    }
    counts = {"images": len(scenes), "captions": sum(map(len, captions)), "hallucinating": int(sum(map(sum, wrong)))}
    return table, counts


def markdown(world: int, table: dict[str, Ranking], counts: dict, cfg: RankingConfig) -> str:
    """The judges' table as docs/world.md shows it."""
    lines = [
        f"world {world}: {counts['captions']} captions of {counts['images']} held-out images "
        f"({counts['hallucinating']} hallucinating), margin {cfg.margin:g}",
        "",
        "| judge | pairs | ranked right | pairs over the margin | clean chosen (over the margin) |",
        "|---|---:|---:|---:|---:|",
    ]
    for judge, ranking in table.items():
        row = ranking.as_dict()
        lines.append(
            f"| {judge} | {row['pairs']} | {row['ranked_right']}% | {row['over_margin']} | "
            f"{row['clean_chosen_over_margin']}% |"
        )
    return "\n".join(lines)


def score_configs(world_root: str, clip_score: dict, judges: list[str], spacy_model: str | None) -> dict[str, dict]:
    """judge -> the score stage's config `clipdpo_lab run --judge` gives it (the world SigLIP trained on first use)."""
    from clipdpo_world.judges import judge_score_config, needs_siglip, world_siglip_scorer

    siglip_scorer = None
    if any(needs_siglip(judge) for judge in judges):
        siglip_scorer = world_siglip_scorer(world_root, say=lambda line: print(line, flush=True))
    return {judge: judge_score_config(clip_score, judge, siglip_scorer, spacy_model) for judge in judges}


def parse_judges(text: str) -> list[str]:
    judges = [judge.strip() for judge in text.split(",") if judge.strip()]
    unknown = [judge for judge in judges if judge not in JUDGES]
    if unknown or not judges:
        raise argparse.ArgumentTypeError(f"judges {unknown or text!r}: expected some of {','.join(JUDGES)}")
    return list(dict.fromkeys(judges))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m clipdpo_lab judges", description=__doc__)
    parser.add_argument("--world", type=int, default=0, help="the world's seed (default 0)")
    parser.add_argument("--world-cache", default=".local/world", help="where worlds are built and cached")
    parser.add_argument("--judges", type=parse_judges, default=list(JUDGES), help=f"some of {','.join(JUDGES)}")
    parser.add_argument("--samples", type=int, default=RankingConfig.samples, help="captions per held-out image")
    parser.add_argument("--out", default="", help="also write the table as JSON to this file")
    parser.add_argument("--captions", default="", help="keep the sampled captions in this JSON file (and reuse them)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from clipdpo_lab.run import pin_cpu

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    pin_cpu()  # before torch loads: the world's models run on the code paths they were built on
    import torch

    from clipdpo_world import data
    from clipdpo_world.build import WorldConfig, build
    from clipdpo_world.scene import SceneConfig

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    spacy_model = os.environ.get("CLIPDPO_SPACY_MODEL")
    spacy_model = str(Path(spacy_model).resolve()) if spacy_model else None
    paths = build(WorldConfig(seed=args.world), args.world_cache, spacy_model, say=lambda line: print(line, flush=True))
    world = json.loads(Path(paths.root, "world.json").read_text())["config"]
    scenes = data.scenes(args.world, "heldout", world["heldout_images"], SceneConfig(**world["scene"]))
    configs = score_configs(paths.root, paths.configs["score"], args.judges, spacy_model)
    cfg = RankingConfig(samples=args.samples)
    captions = cached_captions(args.captions, paths.lvlm, scenes, cfg)
    table, counts = measure(configs, scenes, captions, cfg)
    print(markdown(args.world, table, counts, cfg), flush=True)
    if args.out:
        record = {"world": args.world, "config": asdict(cfg), "counts": counts}
        record["judges"] = {judge: ranking.as_dict() for judge, ranking in table.items()}
        Path(args.out).write_text(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
