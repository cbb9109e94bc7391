"""The score stage's judges on the world (`clipdpo_lab run --judge`, `clipdpo_lab judges`).

The world CLIP (the paper's judge, the default) or the world SigLIP (clipdpo_world.siglip), each scoring whole
captions or noun-level (JudgeConfig's phrase_weight: a caption's score mixed with its least supported object
phrase's, ALOHa's min). Free of torch: the lab's command line imports it before it pins the CPU's code paths.
"""

from __future__ import annotations

JUDGES = ("clip", "siglip", "clip-nouns", "siglip-nouns")
# lambda of the noun-level judges: caption and least supported phrase weigh the same. Chosen before any number,
# not tuned on the world.
NOUN_WEIGHT = 0.5


def needs_siglip(judge: str) -> bool:
    return judge.split("-")[0] == "siglip"


def world_siglip_scorer(world_root: str, say=print) -> dict:
    """The world SigLIP's scorer config for the siglip judges (trained into the world's folder on first use)."""
    from clipdpo_world import siglip

    return siglip.scorer_config(siglip.ensure(world_root, say=say))


def judge_score_config(
    score: dict, judge: str, siglip_scorer: dict | None = None, spacy_model: str | None = None
) -> dict:
    """The score config `score` (the world CLIP's, from stage_configs) with `judge`'s model and JudgeConfig;
    `siglip_scorer`: the world SigLIP's scorer config (siglip.scorer_config) for the siglip judges; `spacy_model`
    for the noun-level ones (JudgeConfig's default package otherwise). `clip` returns `score` as it is (today's
    scores, fingerprint and all)."""
    if judge not in JUDGES:
        raise ValueError(f"judge {judge!r}: expected one of {JUDGES}")
    out, judge_cfg = dict(score), dict[str, object]()
    if needs_siglip(judge):
        if not siglip_scorer:
            raise ValueError(f"judge {judge!r}: needs the world SigLIP's scorer config (clipdpo_world.siglip)")
        out.update(siglip_scorer)
        judge_cfg["scale"] = "siglip"  # what `auto` finds by its logit_bias, said outright
    if judge.endswith("-nouns"):
        judge_cfg.update(phrase_weight=NOUN_WEIGHT, phrase_pool="min")
        if spacy_model:
            judge_cfg["spacy_model"] = spacy_model
    if judge_cfg:
        out["judge"] = judge_cfg
    return out
