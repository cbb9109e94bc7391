"""The synthetic world: seeded scenes, exact ground truth, words the AMBER scorer counts."""

import itertools

import numpy as np
import pytest
from PIL import Image

from clipdpo_world import data, language, scene


def test_same_seed_same_images_other_seed_other_images():
    a = [scene.sample_scene(3, "train", i) for i in range(20)]
    b = [scene.sample_scene(3, "train", i) for i in range(20)]
    c = [scene.sample_scene(4, "train", i) for i in range(20)]
    assert a == b and a != c
    assert [scene.png_bytes(scene.render(s)) for s in a[:5]] == [scene.png_bytes(scene.render(s)) for s in b[:5]]
    assert a != [scene.sample_scene(3, "heldout", i) for i in range(20)]  # splits are independent draws


def test_pixels_hold_the_ground_truth():
    """Each object's 8x8 shape is drawn in its colour at its slot (noise at most SceneConfig.noise)."""
    for s in [scene.sample_scene(0, "train", i) for i in range(40)]:
        pixels = np.asarray(scene.render(s), dtype=int)
        for group in s.objects:
            mask = np.array([[c == "#" for c in row] for row in scene._SHAPES[group.kind]])
            x = scene.SLOT_X[group.slot]
            for y in (scene.SINGLE_Y,) if group.count == 1 else (6, 18):
                drawn = pixels[y : y + 8, x : x + 8][mask]
                assert np.abs(drawn - scene.COLOURS[group.colour]).max() <= scene.SceneConfig().noise
        assert len({g.slot for g in s.objects}) == len(s.objects) and len(set(s.kinds)) == len(s.kinds)


def test_world_statistics_carry_the_cooccurrence():
    items = [scene.sample_scene(0, "train", i) for i in range(2000)]
    with_pair = sum(any(set(p) <= set(s.kinds) for p in scene.PAIRS) for s in items if len(s.objects) >= 2)
    multi = sum(len(s.objects) >= 2 for s in items)
    # random distinct kinds would hold a given pair in ~1/55 of 2-object draws x 5 pairs: ~9%; the sampler aims at 50%+
    assert with_pair / multi > 0.4
    assert sum(bool(s.absent_partners) for s in items) > 0.4 * len(items)  # many images tempt a partner
    assert {s.category for s in items} == {"text", "people", "objects", "scenes"}


def test_captions_name_exactly_the_objects_and_partner_captions_add_one():
    rng = np.random.default_rng(0)
    for s in [scene.sample_scene(1, "train", i) for i in range(50)]:
        text = language.caption(s)
        for group in s.objects:
            assert language.group_phrase(group) in text
        biased = language.with_partner(s, rng)
        if biased is None:
            assert not s.absent_partners
            continue
        text, kind = biased
        assert kind in s.absent_partners and kind in text and kind not in s.kinds


def test_object_words_are_nouns_for_amber_and_not_confused(spacy_nlp):
    nlp = spacy_nlp
    vocab = set(language.vocabulary())
    rng = np.random.default_rng(0)
    for s in [scene.sample_scene(2, "train", i) for i in range(60)]:
        truth = set(s.kinds) | set(scene.BACKGROUND_NOUNS[s.background])
        assert {n for n in nlp.nouns(language.caption(s)) if n in vocab} == truth
        biased = language.with_partner(s, rng)
        if biased:
            assert {n for n in nlp.nouns(biased[0]) if n in vocab} == truth | {biased[1]}
    # AMBER counts a noun within word-vector similarity 0.8 of a truth word as covering it: no two world
    # words may be that close, or a hallucinated kind would pass as a seen one.
    for a, b in itertools.combinations(sorted(vocab), 2):
        assert nlp.similarity(a, b) < 0.8, (a, b)


def test_folder_is_ingestable_with_truth(tmp_path):
    items = data.scenes(0, "heldout", 5)
    folder = data.write_folder(str(tmp_path / "images"), items)
    truth = data.read_truth(folder)
    assert list(truth) == [s.image_id for s in items]
    assert truth[items[0].image_id]["objects"][0]["kind"] == items[0].objects[0].kind
    assert Image.open(tmp_path / "images" / f"{items[0].image_id}.png").size == (scene.SIZE, scene.SIZE)
    with pytest.raises(FileExistsError):
        data.write_folder(folder, items)


def test_benchmark_in_amber_layout_scores_truth_and_partner_captions(tmp_path, spacy_nlp):
    """The real AMBER scorer on the world benchmark: correct captions score CHAIR 0 / Cover 100, captions naming
    an absent partner are hallucinations (and Cog hits), right Yes/No answers give F1 100."""
    import json

    from clipdpo.evaluate import amber
    from clipdpo_world import benchmark

    items = data.scenes(5, "heldout", 40)
    config = benchmark.write(str(tmp_path / "bench"), items, seed=5)
    bench = amber.load(config["amber"]["root"])
    generative = [a for a in bench.annotations if a["type"] == "generative"]
    assert len(generative) == len(items)
    queries = json.loads((tmp_path / "bench/AMBER/data/query/query_all.json").read_text())
    assert all((tmp_path / "bench/AMBER/image" / q["image"]).exists() for q in queries)
    right = {a["id"]: ("Yes" if a["truth"] == "yes" else "No") for a in bench.annotations if a["type"] != "generative"}
    correct = amber.evaluate(bench, {**{i + 1: language.caption(s) for i, s in enumerate(items)}, **right}, spacy_nlp)
    assert correct["generative"]["chair"] == 0 and correct["generative"]["cover"] == 100.0
    assert correct["generative"]["hal"] == 0 and correct["discriminative"]["f1"] == 100.0
    assert {"state", "number", "relation", "existence"} <= set(correct)
    rng = np.random.default_rng(0)
    biased = {i + 1: (language.with_partner(s, rng) or (language.caption(s),))[0] for i, s in enumerate(items)}
    tempted = sum(bool(s.absent_partners) for s in items)
    wrong = amber.evaluate(bench, {**biased, **right}, spacy_nlp)
    assert wrong["generative"]["hal"] == round(100 * tempted / len(items), 1)
    assert wrong["generative"]["cog"] > 0 and wrong["generative"]["cover"] == 100.0
    pope = [json.loads(line) for line in (tmp_path / "bench/pope/questions.jsonl").read_text().splitlines()]
    assert {r["category"] for r in pope} == {"random", "adversarial"}
    assert sum(r["answer"] == "yes" for r in pope) == sum(r["answer"] == "no" for r in pope)
    classes = json.loads((tmp_path / "bench/zero-shot/classes.json").read_text())
    assert all((tmp_path / "bench/zero-shot" / c).is_dir() for c in classes)


def _tiny_world(**overrides):
    from clipdpo_world.build import WorldConfig
    from clipdpo_world.clip import ClipConfig
    from clipdpo_world.lvlm import LvlmConfig
    from clipdpo_world.selfcheck import Bars

    fields = {
        "checks": Bars(enforced=False),
        "train_images": 64,
        "heldout_images": 24,
        "pool_images": 6,
        "clip": ClipConfig(steps=3, batch_size=16),
        "lvlm": LvlmConfig(steps=2, batch_size=4),
    }
    return WorldConfig(**{**fields, **overrides})


def test_world_clip_tower_is_the_llava_vision_tower_exactly(tmp_path):
    """open_clip's image tower converted to transformers' CLIPVisionModel gives the same image embedding."""
    import open_clip
    import torch
    from transformers import CLIPImageProcessor, CLIPVisionModel

    from clipdpo_world import clip, tower

    torch.set_num_threads(1)
    cfg = _tiny_world().clip
    clip.register(str(tmp_path), cfg)
    torch.manual_seed(0)  # random weights: the conversion must hold for any
    model, _, preprocess = open_clip.create_model_and_transforms(clip.WORLD_CLIP_NAME, pretrained=None)
    model.eval()
    hf = CLIPVisionModel(tower.hf_vision_config(clip.model_config(cfg))).eval()
    hf.load_state_dict(tower.hf_vision_state(model.visual.state_dict(), cfg.vision_layers), strict=True)
    images = [scene.render(s) for s in data.scenes(0, "heldout", 3)]
    hf_pixels = CLIPImageProcessor(
        size={"shortest_edge": scene.SIZE}, crop_size={"height": scene.SIZE, "width": scene.SIZE}
    )(images, return_tensors="pt")
    with torch.no_grad():
        expected = model.encode_image(torch.stack([preprocess(i) for i in images]))
        got = hf(pixel_values=hf_pixels["pixel_values"]).pooler_output @ model.visual.proj
    # same arithmetic in another order of operations: float32 rounding only
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_build_refuses_a_clip_that_cannot_rank_and_keys_on_config(tmp_path):
    from clipdpo_world.build import build, world_key
    from clipdpo_world.clip import WorldBuildError

    cfg = _tiny_world()
    assert world_key(cfg) == world_key(_tiny_world()) and world_key(cfg) != world_key(_tiny_world(seed=1))
    with pytest.raises(WorldBuildError, match="world CLIP ranks a correct caption .* below the 90%"):
        build(cfg, str(tmp_path), say=lambda _: None)
    assert not list(tmp_path.glob("world*/world.json"))  # nothing half-built is taken for a finished world


@pytest.mark.slow
def test_build_refuses_an_lvlm_that_cannot_see(tmp_path):
    from clipdpo_world.build import build
    from clipdpo_world.clip import ClipConfig, WorldBuildError

    blind = _tiny_world(clip=ClipConfig(steps=3, batch_size=16, min_pairwise_accuracy=0.0))
    with pytest.raises(WorldBuildError, match="world LVLM does not see: greedy Cover .* below the 90%"):
        build(blind, str(tmp_path), say=lambda _: None)
    assert not list(tmp_path.glob("world*/world.json"))


def test_stage_configs_parse_as_the_stages_read_them(tmp_path):
    """Every stage config the world hands to a run is accepted by that stage's own config class."""
    from clipdpo import config as config_lib
    from clipdpo.evaluate.config import EvaluateConfig
    from clipdpo.filter.select import FilterConfig
    from clipdpo.generate.config import GenerateConfig
    from clipdpo.ingest import IngestConfig
    from clipdpo.score.scorer import ScorerConfig
    from clipdpo.train.config import TrainConfig
    from clipdpo_world import benchmark
    from clipdpo_world.stageconfigs import stage_configs

    paths = {"images": "/w/images", "clip": "/w/clip", "lvlm": "/w/lvlm"}
    configs = stage_configs(
        paths, benchmark.config("/w/benchmarks"), seed=0, samples_per_image=6, spacy_model="/nlp/md"
    )
    evaluate = {**configs["evaluate"], "models": [{"name": "base", "path": "/w/lvlm", "engine": "hf"}]}
    evaluate.pop("engine")  # a key of the pipeline's evaluate step, not of the stage
    classes = {
        "ingest": IngestConfig,
        "generate": GenerateConfig,
        "score": ScorerConfig,
        "filter": FilterConfig,
        "train": TrainConfig,
    }
    parsed = {stage: config_lib.from_dict(cls, configs[stage]) for stage, cls in classes.items()}
    parsed["evaluate"] = config_lib.from_dict(EvaluateConfig, evaluate)
    assert parsed["score"].pretrained.endswith("open_clip_model.pt") and set(parsed["score"].categories) == {
        "text",
        "people",
        "objects",
        "scenes",
    }
    assert all(len(texts) == 10 for texts in parsed["score"].categories.values())
    assert parsed["generate"].qa.enabled is False and parsed["generate"].sampling.temperature == 1.0
    assert parsed["evaluate"].amber.nlp.spacy_model == "/nlp/md"
    decoding = parsed["evaluate"].amber.decoding  # the world's descriptions are sampled (stageconfigs.EVAL_DECODING)
    assert (decoding.temperature, decoding.samples) == (1.0, 3) and not decoding.greedy
    assert parsed["evaluate"].zero_shot.text_encoder.model_name == "clipdpo-world-clip"


@pytest.mark.slow
def test_every_stage_runs_on_a_small_unchecked_world(tmp_path):
    """ingest -> generate -> score -> filter -> train -> evaluate on a world too small to see (self-checks
    off): the world's stage configs and models go through the real stages, base vs trained in metrics.json.
    The effect itself needs the full world (`python -m clipdpo_world measure`, minutes)."""
    import torch

    from clipdpo.evaluate.nlp import local_spacy_model
    from clipdpo_lab.effect import run_stages, summary
    from clipdpo_world.build import build
    from clipdpo_world.clip import ClipConfig
    from clipdpo_world.lvlm import LvlmConfig

    torch.set_num_threads(1)
    cfg = _tiny_world(
        pool_images=8,
        samples_per_image=3,
        heldout_images=12,
        clip=ClipConfig(steps=3, batch_size=16, min_pairwise_accuracy=0.0),
        lvlm=LvlmConfig(steps=3, batch_size=4, min_cover=0.0),
    )
    paths = build(cfg, str(tmp_path / "world"), spacy_model=local_spacy_model(), say=lambda _: None)
    assert build(cfg, str(tmp_path / "world"), say=lambda _: None).root == paths.root  # cached: no rebuild
    loose = {
        "filter": {"caption_min_score": -100, "pair_min_margin": 0.0, "pair_min_length_ratio": 0.0},
        "train": {"global_batch_size": 4, "per_device_batch_size": 4},
    }
    measured = run_stages(paths, str(tmp_path / "run"), overrides=loose, say=lambda _: None)
    results = summary(measured["metrics"])
    assert set(results) == {"base", "clipdpo"}
    assert all(
        r["chair"] is not None and r["f1"] is not None and r["amber_score"] is not None for r in results.values()
    )
    assert measured["metrics"]["complete"]


def test_lvlm_examples_encode_as_the_processor_encodes_the_whole_conversation():
    """SFT encodes prompt and answer apart (once each); the ids must equal the processor's on the full text, and
    the training captions carry the bias: about bias_fraction of the tempting images name an absent partner."""
    from clipdpo_world import lvlm

    cfg = lvlm.LvlmConfig(vision_from_clip=False)
    items = data.scenes(0, "train", 400)
    tokenizer = lvlm.build_tokenizer(lvlm.corpus(items[:50], cfg), cfg.vocab_size)
    _, processor = lvlm.build_model(tokenizer, cfg)
    rng = np.random.default_rng(0)
    for s in items[:10]:
        for examples in lvlm.training_examples(s, rng, cfg).values():
            for prompt, answer in examples[:2]:
                ids = lvlm.prompt_ids(processor, prompt) + lvlm.answer_ids(processor, answer)
                assert ids == lvlm.encode_example(processor, prompt, answer), (prompt, answer)
    tempting = [s for s in items if s.absent_partners]
    biased = sum(lvlm.training_examples(s, rng, cfg)["caption"][0][1] != language.caption(s) for s in tempting)
    # binomial(n ~ 300, p = bias_fraction): 4 standard deviations either side
    n = len(tempting)
    p = cfg.bias_fraction
    assert abs(biased - p * n) < 4 * (p * (1 - p) * n) ** 0.5


def test_control_shuffles_caption_scores_within_each_image_only():
    from clipdpo_lab.control import shuffled_scores

    ids = ["a", "a", "a", "b", "b", "a"]
    kinds = ["caption", "caption", "caption", "caption", "caption", "qa"]
    scores = np.array([1.0, 2.0, 3.0, 10.0, 20.0, 99.0])
    seen = set()
    for seed in range(20):
        out = shuffled_scores(ids, kinds, scores, seed)
        assert sorted(out[:3]) == [1.0, 2.0, 3.0] and sorted(out[3:5]) == [10.0, 20.0] and out[5] == 99.0
        seen.add(tuple(out))
    assert len(seen) > 3  # the order really changes with the seed
    np.testing.assert_array_equal(shuffled_scores(ids, kinds, scores, 7), shuffled_scores(ids, kinds, scores, 7))


def test_control_gives_every_copy_of_a_caption_one_shuffled_score():
    from clipdpo_lab.control import shuffled_scores

    # image a: texts x, x, y, z (x twice: CLIP scored both copies 1.0); image b: one text twice
    ids = ["a", "a", "a", "a", "b", "b"]
    kinds = ["caption"] * 6
    texts = ["x", "x", "y", "z", "w", "w"]
    scores = np.array([1.0, 1.0, 2.0, 3.0, 5.0, 5.0])
    assignments = set()
    for seed in range(30):
        out = shuffled_scores(ids, kinds, scores, seed, texts=texts)
        assert out[0] == out[1]  # copies of x never split, so the filter never pairs x with x
        assert sorted({out[0], out[2], out[3]}) == [1.0, 2.0, 3.0]  # a permutation over the distinct texts
        assert list(out[4:]) == [5.0, 5.0]
        assignments.add((out[0], out[2], out[3]))
    assert len(assignments) == 6  # all 3! assignments of a's distinct texts occur in 30 seeds
