"""The judges on the world: `clipdpo_lab run --judge` sets the score stage's judge; `clipdpo_lab judges` counts
how often each ranks a clean caption of the LLaVA above a hallucinating one."""

from __future__ import annotations

import numpy as np
import pytest
from test_world_run import fake_built_world, local_configs, parse, qa_writer_stub  # noqa: F401 (a fixture)

WORLD_CLIP_SCORE = {"model_name": "clipdpo-world-clip", "pretrained": "/w/clip/m.pt", "model_config_dir": "/w/clip"}
SIGLIP_SCORE = {"model_name": "clipdpo-world-sigmoid", "pretrained": "/w/s/m.pt", "model_config_dir": "/w/s"}


def test_each_judge_is_a_score_config_the_score_stage_reads():
    from clipdpo import config as config_lib
    from clipdpo.score.scorer import ScorerConfig
    from clipdpo_world.judges import JUDGES, NOUN_WEIGHT, judge_score_config

    score = {**WORLD_CLIP_SCORE, "categories": {"objects": ["a cup"]}}
    configs = {judge: judge_score_config(score, judge, SIGLIP_SCORE, "/nlp/md") for judge in JUDGES}
    assert configs["clip"] == score  # the default judge leaves the world's score config (and its fingerprint) alone
    parsed = {judge: config_lib.from_dict(ScorerConfig, config) for judge, config in configs.items()}
    assert [parsed[j].model_name for j in JUDGES] == ["clipdpo-world-clip", "clipdpo-world-sigmoid"] * 2
    assert [parsed[j].judge.scale for j in JUDGES] == ["auto", "siglip", "auto", "siglip"]
    assert [parsed[j].judge.phrase_weight for j in JUDGES] == [0.0, 0.0, NOUN_WEIGHT, NOUN_WEIGHT]
    assert parsed["siglip-nouns"].judge.spacy_model == "/nlp/md" and parsed["siglip"].categories == score["categories"]
    with pytest.raises(ValueError, match="judge 'siglip': needs the world SigLIP"):
        judge_score_config(score, "siglip")
    with pytest.raises(ValueError, match="judge 'blip'"):
        judge_score_config(score, "blip", SIGLIP_SCORE)


def test_judge_flag_sets_the_score_stage_of_a_world_run(tmp_path, monkeypatch):
    import torch

    from clipdpo_world import siglip

    for name in ("CLIPDPO_WORLD", "CLIPDPO_CONTROL", "CLIPDPO_WORLD_CACHE", "CLIPDPO_JUDGE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", str(torch.get_num_threads()))  # keep this process's threads as they are
    monkeypatch.setenv("CLIPDPO_SPACY_MODEL", "/nlp/md")
    root = fake_built_world(tmp_path / "cache", seed=7)
    asked = []  # training the SigLIP is its own tests' business: here, which world it is asked for
    monkeypatch.setattr(siglip, "ensure", lambda world_root, say=print: asked.append(world_root) or "/w/siglip")
    argv = ["--world", "7", "--world-cache", str(tmp_path / "cache")]
    assert parse(argv, monkeypatch).judge == "clip"
    plain = local_configs(parse(argv, monkeypatch), tmp_path / "state")["score"]
    assert plain["model_name"] == "clipdpo-world-clip" and "judge" not in plain and asked == []
    nouns = local_configs(parse([*argv, "--judge", "clip-nouns"], monkeypatch), tmp_path / "state")["score"]
    assert nouns["model_name"] == "clipdpo-world-clip" and nouns["judge"]["phrase_weight"] == 0.5
    assert nouns["judge"]["spacy_model"] == "/nlp/md" and asked == []
    monkeypatch.setenv("CLIPDPO_JUDGE", "siglip-nouns")
    both = local_configs(parse(argv, monkeypatch), tmp_path / "state")["score"]
    assert asked == [str(root.resolve())]
    assert both["model_config_dir"] == "/w/siglip" and both["judge"]["scale"] == "siglip"
    with pytest.raises(SystemExit):
        parse([*argv, "--judge", "blip"], monkeypatch)


def test_rank_pairs_counts_clean_against_hallucinating_pairs_as_worked_by_hand():
    """Image a: clean 5 against hallucinating 1 (right, 4 > margin 2) and 3.5 (right, 1.5 under the margin);
    image b: clean 2 against 6 (wrong, over the margin) and a tie with 2 (not right); image c: all clean, no pair."""
    from clipdpo_lab.judges import rank_pairs

    scores = [np.array([5.0, 1.0, 3.5]), np.array([2.0, 6.0, 2.0]), np.array([4.0, 9.0])]
    wrong = [np.array([False, True, True]), np.array([False, True, True]), np.array([False, False])]
    ranking = rank_pairs(scores, wrong, margin=2.0)
    assert (ranking.pairs, ranking.right, ranking.over_margin, ranking.over_margin_right) == (4, 2, 2, 1)
    assert ranking.images == 2
    row = ranking.as_dict()
    assert (row["ranked_right"], row["clean_chosen_over_margin"]) == (50.0, 50.0)
    # the margin is the filter's strict rule: a difference of exactly 2 is not over it
    assert rank_pairs([np.array([3.0, 1.0])], [np.array([False, True])], margin=2.0).over_margin == 0


def test_hallucinates_is_the_worlds_ground_truth():
    from clipdpo_lab.judges import hallucinates
    from clipdpo_world import data, language

    rng = np.random.default_rng(0)
    scenes = [s for s in data.scenes(0, "heldout", 40) if s.absent_partners]
    assert scenes
    for scene in scenes[:5]:
        assert not hallucinates(scene, language.caption(scene))
        partnered = language.with_partner(scene, rng)
        assert partnered is not None and hallucinates(scene, partnered[0])


def test_judge_scores_rank_with_the_score_stages_scale(tmp_path):
    """judge_scores on an untrained world SigLIP: each caption's score is the scorer's t cos + b + 28 of that
    image and caption, and captions stay with their image."""
    import torch

    from clipdpo.score.scorer import ClipScorer, ScorerConfig
    from clipdpo_lab.judges import judge_scores
    from clipdpo_world import data, scene, siglip
    from clipdpo_world.clip import ClipConfig

    torch.set_num_threads(1)
    siglip.register(str(tmp_path), siglip.SiglipConfig(tower=ClipConfig()))
    config = {"model_name": siglip.WORLD_SIGLIP_NAME, "pretrained": None, "model_config_dir": str(tmp_path)}
    scenes = data.scenes(0, "heldout", 2)
    images = [scene.render(s) for s in scenes]
    captions = [["a picture of a cat.", "a field with a tree."], ["a page of text."]]
    got = judge_scores(config, images, captions)
    assert [len(s) for s in got] == [2, 1]
    scorer = ClipScorer(ScorerConfig(**config))
    image_emb = scorer.encode_images(images)
    texts = scorer.encode_texts(["a picture of a cat.", "a field with a tree.", "a page of text."])
    t, b = scorer.model.logit_scale.exp().item(), scorer.model.logit_bias.item()
    expected = [t * float(image_emb[i] @ texts[j]) + b + 28.0 for i, j in ((0, 0), (0, 1), (1, 2))]
    np.testing.assert_allclose(np.concatenate(got), expected, rtol=1e-5)


def test_sampled_captions_are_kept_and_reused_for_the_same_model_and_settings(tmp_path, monkeypatch):
    from clipdpo_lab import judges

    calls = []

    def sample(lvlm_dir, scenes, cfg):
        calls.append(cfg)
        return [[f"caption {cfg.seed} {i}"] * cfg.samples for i in range(len(scenes))]

    monkeypatch.setattr(judges, "sample_captions", sample)
    path, cfg = str(tmp_path / "captions.json"), judges.RankingConfig(samples=2)
    first = judges.cached_captions(path, "/w/lvlm", [0, 1, 2], cfg)
    assert judges.cached_captions(path, "/w/lvlm", [0, 1, 2], cfg) == first and len(calls) == 1
    other = judges.cached_captions(path, "/w/lvlm", [0, 1, 2], judges.RankingConfig(samples=2, seed=1))
    assert other != first and len(calls) == 2  # other settings: sampled again (and kept instead)
    assert judges.cached_captions("", "/w/lvlm", [0], cfg) == [["caption 0 0"] * 2] and len(calls) == 3
