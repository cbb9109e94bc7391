"""The judge: CLIP's and SigLIP's score scales, the noun-level combination, and the score stage with each,
checked against values worked out by hand and against the models' own encoders."""

import copy
import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from clipdpo import score
from clipdpo.config import ConfigError, from_dict
from clipdpo.demo import models as tiny
from clipdpo.schemas import CANDIDATES, IMAGES
from clipdpo.score import judge
from clipdpo.score.scorer import ClipScorer, JudgeConfig, ScorerConfig, score_scale
from clipdpo.score.shard import score_shard

# A tiny open_clip model trained with the sigmoid loss: a logit_bias beside the logit_scale, as open_clip's
# SigLIP configs (init_logit_bias) have. Its name says "sigmoid", not "siglip": open_clip's get_tokenizer gives
# any name with "siglip" in it SigLIP's sentencepiece tokenizer, which is on the hub.
TINY_SIGMOID = "clipdpo-test-sigmoid"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    """The tiny CLIP's config and, beside it, the same model with SigLIP's initial t 10 and b -10."""
    folder = Path(tiny.build_tiny_clip(str(tmp_path_factory.mktemp("judges"))))
    config = json.loads((folder / f"{tiny.TINY_CLIP_NAME}.json").read_text())
    config.update(init_logit_scale=math.log(10), init_logit_bias=-10.0)
    (folder / f"{TINY_SIGMOID}.json").write_text(json.dumps(config))
    return str(folder)


def _scorer(model_dir: str, name: str) -> ClipScorer:
    return ClipScorer(ScorerConfig(model_name=name, pretrained=None, model_config_dir=model_dir))


@pytest.fixture(scope="module")
def siglip(model_dir) -> ClipScorer:
    return _scorer(model_dir, TINY_SIGMOID)


def test_siglip_scale_by_hand():
    # t 10, b -10, offset 28: 10 x 0.25 - 10 + 28 = 20.5; 10 x 1.0 - 10 + 28 = 28 (even odds on the floor)
    got = judge.siglip_scores(np.array([0.25, 1.0, -0.5]), logit_scale=10.0, logit_bias=-10.0, offset=28.0)
    np.testing.assert_allclose(got, [20.5, 28.0, 13.0])
    # a score difference is the log-ratio of the two captions' match odds, as CLIP's is of softmax probabilities
    p_a, p_b = 1 / (1 + math.exp(-(10 * 0.8 - 10))), 1 / (1 + math.exp(-(10 * 0.5 - 10)))
    a, b = judge.siglip_scores(np.array([0.8, 0.5]), logit_scale=10.0, logit_bias=-10.0, offset=28.0)
    assert a - b == pytest.approx(math.log(p_a / (1 - p_a)) - math.log(p_b / (1 - p_b)))
    np.testing.assert_allclose(judge.clip_scores(np.array([0.31, -0.02])), [31.0, -2.0])


def test_phrase_combination_by_hand():
    pooled_min = judge.pooled_phrase_scores([np.array([25.0, 31.0]), np.array([]), np.array([29.0])], "min")
    pooled_mean = judge.pooled_phrase_scores([np.array([25.0, 31.0]), np.array([]), np.array([29.0])], "mean")
    np.testing.assert_allclose(pooled_min, [25.0, np.nan, 29.0])
    np.testing.assert_allclose(pooled_mean, [28.0, np.nan, 29.0])
    captions = np.array([30.0, 33.0, np.nan])
    # 0.5 x 30 + 0.5 x 25 = 27.5; no phrase: the caption's own 33; no caption score: NaN stays
    np.testing.assert_allclose(judge.combine_with_phrases(captions, pooled_min, 0.5), [27.5, 33.0, np.nan])
    # 0.75 x 30 + 0.25 x 28 = 29.5
    np.testing.assert_allclose(judge.combine_with_phrases(captions, pooled_mean, 0.25), [29.5, 33.0, np.nan])
    with pytest.raises(ValueError, match="phrase pool 'max'"):
        judge.pooled_phrase_scores([np.array([1.0])], "max")


def test_judge_config_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"config.judge: scale: 'sigmoid'; expected one of"):
        from_dict(ScorerConfig, {"judge": {"scale": "sigmoid"}})
    with pytest.raises(ConfigError, match=r"config: judge.phrase_weight must be in \[0, 1\], got 1.5"):
        from_dict(ScorerConfig, {"judge": {"phrase_weight": 1.5}})
    with pytest.raises(ConfigError, match=r"config.judge: phrase_pool: 'max'"):
        from_dict(ScorerConfig, {"judge": {"phrase_pool": "max"}})


def _independent_cosines(scorer: ClipScorer, image: Image.Image, texts: list[str]) -> np.ndarray:
    with torch.no_grad():
        img = scorer.model.encode_image(scorer.preprocess(image)[None]).numpy()[0]
        txt = scorer.model.encode_text(scorer.tokenizer(texts)).numpy()
    return np.array([float(img @ t / np.linalg.norm(img) / np.linalg.norm(t)) for t in txt])


def test_siglip_model_scored_on_its_own_logit(model_dir, siglip):
    assert siglip.config.judge.scale == "auto"  # a logit_bias, so SigLIP's scale
    image, texts = Image.new("RGB", (40, 30), (10, 200, 30)), ["a green field", "a red car"]
    cos = _independent_cosines(siglip, image, texts)
    got = siglip.scale(siglip.encode_images([image])[0] @ siglip.encode_texts(texts).T)
    np.testing.assert_allclose(got, 10.0 * cos - 10.0 + 28.0, rtol=1e-4, atol=1e-4)
    model = copy.deepcopy(siglip.model)
    with torch.no_grad():  # t and b are the model's, read when the scale is made, not assumed
        model.logit_scale.fill_(math.log(7.0))
        model.logit_bias.fill_(-3.0)
    rescaled = score_scale(model, JudgeConfig(siglip_offset=20.0), TINY_SIGMOID)
    np.testing.assert_allclose(rescaled(cos), 7.0 * cos - 3.0 + 20.0, rtol=1e-6)
    clip = _scorer(model_dir, tiny.TINY_CLIP_NAME)  # auto: no logit_bias, the paper's 100 x cos
    cos = _independent_cosines(clip, image, texts)
    np.testing.assert_allclose(clip.scale(cos.astype(np.float32)), 100 * cos, rtol=1e-5)
    with pytest.raises(ConfigError, match="siglip needs a model trained with the sigmoid loss"):
        score_scale(clip.model, JudgeConfig(scale="siglip"), tiny.TINY_CLIP_NAME)


def _png(color) -> bytes:
    import io

    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), color).save(buffer, format="PNG")
    return buffer.getvalue()


def _shard(captions: list[str]) -> tuple[pa.Table, pa.Table]:
    images = pa.Table.from_pylist(
        [dict(image_id="i", source="s", uri="u", image=_png((200, 30, 10)), width=40, height=30)], schema=IMAGES
    )
    rows = [
        dict(image_id="i", candidate_id=f"i/m/p/{k}", kind="caption", model="m", prompt_id=0, prompt="p", text=text)
        for k, text in enumerate(captions)
    ]
    return pa.Table.from_pylist(rows, schema=CANDIDATES), images


def test_noun_level_scores_in_the_stage(siglip, spacy_model):
    captions = ["a picture of a red cup on the left and two cats", "it is a picture"]
    noun_judge = JudgeConfig(phrase_weight=0.25, phrase_pool="min", spacy_model=spacy_model)
    scorer = copy.copy(siglip)
    scorer.config = replace(siglip.config, judge=noun_judge)
    assert scorer.object_phrases(captions) == [["a red cup", "two cats"], []]
    candidates, images = _shard(captions)
    table, stats = score_shard(candidates, images, scorer)
    image = Image.new("RGB", (40, 30), (200, 30, 10))
    cos = _independent_cosines(scorer, image, [*captions, "a red cup", "two cats"])
    siglip = 10.0 * cos - 10.0 + 28.0
    expected = [0.75 * siglip[0] + 0.25 * min(siglip[2], siglip[3]), siglip[1]]  # no object phrase: whole caption
    np.testing.assert_allclose(table.column("clip_score").to_pylist(), expected, rtol=1e-4, atol=1e-3)
    assert stats["text_encodes"] == 4  # two captions, two distinct phrases


def test_default_judge_keeps_the_scores_fingerprint(model_dir):
    cfg = ScorerConfig(model_name=tiny.TINY_CLIP_NAME, pretrained=None, model_config_dir=model_dir)
    assert "judge" not in score.score_identity(cfg)  # the same numbers as before the judge was a setting
    noun = from_dict(ScorerConfig, {"model_name": tiny.TINY_CLIP_NAME, "judge": {"phrase_weight": 0.5}})
    assert score.score_identity(noun)["judge"]["phrase_weight"] == 0.5
