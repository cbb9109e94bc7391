"""The world QA writer (the paper's instruction LLM, on the world): its training targets, its cache, and QA rows
through generate."""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import asdict, replace

import numpy as np
import pytest

from clipdpo.generate.qa_parse import QAItem, parse_qa
from clipdpo_world import data, language, metrics, qawriter
from clipdpo_world.qawriter import QAWriterConfig

# A writer small enough to train in seconds: it checks wiring and caching, not what the writer learns
# (the real one's held-out share is measured by its own self-check and in the README).
TINY = QAWriterConfig(hidden=32, steps=2, batch_size=4, train_scenes=40, check_scenes=4, min_right=0.0)


def test_training_replies_parse_and_are_right_by_the_ground_truth():
    """Every target reply parses into n blocks with qa_parse and each block is right by the scene's truth;
    flipping an answer, or a question of another form, is not right."""
    cfg = QAWriterConfig()
    rng = np.random.default_rng(0)
    kinds = Counter()
    for scene in data.scenes(3, "train", 300):
        prompt, reply = qawriter.example(scene, rng, cfg)
        items = parse_qa(reply, cfg.questions).items
        assert len(items) == cfg.questions and all(qawriter.is_right(scene, item) for item in items), reply
        assert not any(qawriter.is_right(scene, QAItem(i.question, i.wrong, i.correct)) for i in items)
        kinds.update(i.question.split()[0] + ("-no" if i.correct == "No" else "") for i in items)
        assert prompt.startswith("Captions:\n1. " + language.OPENINGS[scene.background])
    # the paper's point: existence questions about the absent partner, answered No, and present ones (Yes)
    assert all(kinds[k] > 20 for k in ("Is", "Is-no", "What", "How")), kinds
    scene = data.scenes(3, "train", 1)[0]
    assert not qawriter.is_right(scene, QAItem("What is the man holding?", "a cup", "a ball"))


def _scene(background: str, *groups: tuple[str, str, int, int]):
    from clipdpo_world.scene import ObjectGroup, Scene

    return Scene("s", background, tuple(ObjectGroup(*g) for g in groups), 0)


def test_questions_follow_the_captions_majority_and_answers_the_truth():
    """Worked by hand. A man (no partner) on the left, a white cup in the middle, on a field; 2 of 6 captions
    name a book (cup's partner) that is not there: the anchor is the cup (the most named kind with a partner); a
    field asks its count first, then whether the book is there (No), then its position (the wrong answer the
    next slot)."""
    from clipdpo_world.scene import ObjectGroup

    scene = _scene("field", ("man", "black", 1, 0), ("cup", "white", 1, 1))
    right = language.caption(scene)
    assert right == "a field with a black man on the left and a white cup in the middle."
    with_book = "a field with a black man on the left, a white cup in the middle and a blue book on the right."
    captions = [right, with_book, right, right, with_book, right]
    assert qawriter.kinds_named(with_book) == ["man", "cup", "book"]
    assert qawriter.reading(captions) == qawriter.Reading("cup", "field")
    items = qawriter.truth_items(scene, captions, 3)
    assert items == [
        QAItem("How many cups are there?", "one", "two"),
        QAItem("Is there a book in this image?", "No", "Yes"),
        QAItem("Where is the cup?", "in the middle", "on the right"),
    ]
    assert all(qawriter.is_right(scene, item) for item in items)
    assert parse_qa(qawriter.reply(items[:2]), 2).items == items[:2]  # the reply round-trips through qa_parse
    # the same captions over a scene where the book is there: the same questions, the truth's answers
    with_it = _scene("field", ("man", "black", 1, 0), ("cup", "white", 1, 1), ("book", "blue", 1, 2))
    assert qawriter.truth_items(with_it, captions, 2)[1] == QAItem("Is there a book in this image?", "Yes", "No")
    # page: colour first; field: count (two copies: the plural)
    two_cups = _scene("page", ("cup", "yellow", 2, 2))
    assert qawriter.truth_items(two_cups, [language.caption(two_cups)], 1) == [
        QAItem("What colour is the cup?", "yellow", "white")
    ]
    two_cups = _scene("field", ("cup", "yellow", 2, 2))
    assert qawriter.truth_items(two_cups, [language.caption(two_cups)], 1) == [
        QAItem("How many cups are there?", "two", "one")
    ]
    assert language.caption(two_cups) == "a field with two yellow cups on the right."
    assert ObjectGroup("cup", "yellow", 2, 2).position == "right"


def test_the_anchor_is_the_most_named_kind_with_a_partner_and_answers_stay_true():
    """4 of 6 captions put a hallucinated book left of the only cup: the cup, named by all 6, is the anchor and
    the book's question answers No. When the book is named by more captions than the cup (a majority naming an
    absent kind), the attribute question cannot be about the book: it goes to the book's partner, and the
    existence question asks for that partner (Yes). Ties go to the kind earlier in KINDS; a man alone has no
    partner: attributes only, plain's colour first."""
    scene = _scene("plain", ("cup", "white", 1, 1))
    book_first = "a picture of a blue book on the left and a white cup in the middle."
    captions = [book_first] * 4 + [language.caption(scene)] * 2
    assert qawriter.reading(captions).anchor == "cup"
    assert qawriter.truth_items(scene, captions, 2) == [
        QAItem("What colour is the cup?", "white", "yellow"),
        QAItem("Is there a book in this image?", "No", "Yes"),
    ]
    only_book = ["a picture of a blue book in the middle."] * 4 + [language.caption(scene)] * 2
    assert qawriter.reading(only_book).anchor == "book"
    assert qawriter.truth_items(scene, only_book, 2) == [
        QAItem("What colour is the cup?", "white", "yellow"),
        QAItem("Is there a cup in this image?", "Yes", "No"),
    ]
    cup_and_ball = ["a picture of a white cup on the left and a red ball in the middle."]
    assert qawriter.reading(cup_and_ball).anchor == "ball"  # ball comes before cup in KINDS
    man = _scene("plain", ("man", "blue", 2, 0))
    assert qawriter.reading(["two blue men on the left."]) == qawriter.Reading("man", "plain")  # opening unknown
    assert qawriter.truth_items(man, [language.caption(man)], 2) == [
        QAItem("What colour is the man?", "blue", "black"),
        QAItem("How many men are there?", "two", "one"),
    ]
    assert qawriter.truth_items(man, ["garbled text"], 1) == [QAItem("What colour is the man?", "blue", "black")]


def test_noisy_captions_carry_the_lvlm_errors_at_the_config_rates():
    """About partner_probability of the captions of scenes with an absent partner name it; most captions of a
    scene without any error are its correct caption."""
    cfg = QAWriterConfig()
    rng = np.random.default_rng(1)
    tempting = [s for s in data.scenes(4, "train", 800) if s.absent_partners]
    named = sum(
        bool(set(metrics.mentioned(qawriter.noisy_caption(s, rng, cfg))) & set(s.absent_partners)) for s in tempting
    )
    # binomial sd at p=0.3 over ~300+ scenes is under 3 points; 7 points of room
    assert abs(named / len(tempting) - cfg.partner_probability) < 0.07, (named, len(tempting))
    clean = [s for s in data.scenes(4, "train", 2000) if not s.absent_partners]  # ~420 scenes: sd 2 points
    exact = sum(qawriter.noisy_caption(s, rng, cfg) == language.caption(s) for s in clean) / len(clean)
    error_rate = cfg.swap_probability + cfg.count_probability + cfg.drop_probability  # drop needs 2+ groups
    assert 1 - error_rate - 0.08 < exact <= 1.0


def _fake_world_writer_key(cfg, seed=3) -> str:
    from clipdpo_world import qawriter_build
    from clipdpo_world.build import WorldConfig

    scene = asdict(WorldConfig(seed=seed).scene)
    return qawriter_build.writer_key(qawriter_build.scenes_key(cfg.source_world, scene), cfg)


def _fake_world(tmp_path, seed=3):
    root = tmp_path / f"world{seed}-abc"
    root.mkdir(parents=True)
    from clipdpo_world.build import WorldConfig

    (root / "world.json").write_text(json.dumps({"key": "abc", "config": asdict(WorldConfig(seed=seed))}))
    return root


def test_a_writer_staged_beside_an_unbuilt_world_is_moved_in_not_trained_again(tmp_path, monkeypatch):
    """The lab trains the writer in a second process while the world builds (qawriter_build.stage, beside the
    world's future folder); once the world is built, `ensure` moves it in."""
    import torch

    from clipdpo_world import qawriter_build as qb
    from clipdpo_world.build import WorldConfig

    torch.set_num_threads(1)
    scene = asdict(WorldConfig(seed=3).scene)
    staged = qb.stage(str(tmp_path), scene, TINY, say=lambda _: None)
    key = qb.writer_key(qb.scenes_key(TINY.source_world, scene), TINY)
    assert staged == str(qb.staged_path(tmp_path, key))
    root = _fake_world(tmp_path)
    monkeypatch.setattr(qb, "train", lambda *a, **k: pytest.fail("a staged writer must not train again"))
    folder = qb.ensure(str(root), TINY, say=lambda _: None)
    assert folder == str(root / f"qa-writer-{key}") and (root / folder / qb.WRITER_FILE).exists()
    assert (tmp_path / staged / qb.WRITER_FILE).exists()  # kept for another build of the seed
    # the writer reads scenes only, of its own source world: another world key (a changed LLaVA) of the seed, and
    # another seed, use the same writer
    other = tmp_path / "world3-abd"
    other.mkdir()
    (other / "world.json").write_text((root / "world.json").read_text().replace('"abc"', '"abd"'))
    assert qb.ensure(str(other), TINY, say=lambda _: None) == str(other / f"qa-writer-{key}")
    another_seed = _fake_world(tmp_path, seed=7)
    assert qb.ensure(str(another_seed), TINY, say=lambda _: None) == str(another_seed / f"qa-writer-{key}")
    # a writer learnt from another source world is another writer
    assert qb.writer_key(qb.scenes_key(5, scene), replace(TINY, source_world=5)) != key


def test_writer_is_cached_atomically_under_its_own_key(tmp_path, monkeypatch):
    import torch

    from clipdpo_world import qawriter_build as qb
    from clipdpo_world.clip import WorldBuildError

    torch.set_num_threads(1)
    root = _fake_world(tmp_path)
    folder = qb.ensure(str(root), TINY, say=lambda _: None)
    assert folder == str(root / f"qa-writer-{_fake_world_writer_key(TINY)}")
    record = json.loads((root / folder / qb.WRITER_FILE).read_text())
    assert record["scenes"] == qb.scenes_key(
        TINY.source_world, json.loads((root / "world.json").read_text())["config"]["scene"]
    )
    assert record["check"]["asked"] == 2 * TINY.check_scenes
    assert sorted(p.name for p in root.iterdir()) == [folder.rsplit("/", 1)[1], "world.json"]  # no .partial left
    monkeypatch.setattr(qb, "train", lambda *a, **k: pytest.fail("a cached writer must not train again"))
    assert qb.ensure(str(root), TINY, say=lambda _: None) == folder
    assert qb.writer_key("abc", TINY) != qb.writer_key("abd", TINY)
    assert qb.writer_key("abc", TINY) != qb.writer_key("abc", replace(TINY, steps=3))
    monkeypatch.undo()
    # a writer below the self-check's bar is refused and leaves no finished folder behind
    with pytest.raises(WorldBuildError, match="world QA writer: .* below the 100% required"):
        qb.ensure(str(root), replace(TINY, min_right=1.0), say=lambda _: None)
    assert not (root / f"qa-writer-{_fake_world_writer_key(replace(TINY, min_right=1.0))}").exists()

    # the hf engine loads it as a chat LLM and its replies go through the generate stage's QA path
    from clipdpo.engines import ModelSpec, Sampling, load_engine
    from clipdpo.generate.config import QAConfig
    from clipdpo.generate.shard import qa_rows

    spec = ModelSpec(name="world-qa-writer", path=folder, engine="hf", dtype="float32")
    engine = load_engine(spec, vision=False)
    sent = []
    chat = engine.chat
    engine.chat = lambda prompts, sampling: sent.extend(prompts) or chat(prompts, sampling)  # see what it is asked
    captions = {s.image_id: [language.caption(s), language.caption(s) + " x"] for s in data.scenes(3, "heldout", 2)}
    stats = Counter()
    qa = QAConfig(model=spec, sampling=Sampling(max_new_tokens=8), prompt_template=qawriter.PROMPT_TEMPLATE)
    qa_rows(captions, qa, engine, stats)
    assert sent == [qawriter.qa_prompt(texts, 2) for texts in captions.values()]  # what the writer trained on


def test_stage_configs_keep_qa_off_and_world_qa_config_turns_it_on(tmp_path, monkeypatch):
    import torch

    from clipdpo import config as config_lib
    from clipdpo.generate.config import GenerateConfig
    from clipdpo_world import benchmark, qawriter_build
    from clipdpo_world.stageconfigs import stage_configs, world_qa_config

    torch.set_num_threads(1)
    bench = benchmark.config("/w/benchmarks")
    root = _fake_world(tmp_path)
    paths = {"images": str(root / "images"), "clip": str(root / "clip"), "lvlm": str(root / "lvlm")}
    monkeypatch.setenv("CLIPDPO_WORLD_QA", "1")  # the run's switch (pipelines.run --qa), not the stage configs'
    assert stage_configs(paths, bench, 3, 6, None)["generate"]["qa"] == {"enabled": False}
    assert not list(root.glob("qa-writer-*"))
    monkeypatch.setattr(qawriter_build, "DEFAULT", TINY)
    generate = {**stage_configs(paths, bench, 3, 6, None)["generate"], "qa": world_qa_config(str(root), say=print)}
    generate = config_lib.from_dict(GenerateConfig, generate)
    assert generate.qa.enabled and generate.qa.model.engine == "hf"
    assert generate.qa.model.path == str(root / f"qa-writer-{_fake_world_writer_key(TINY)}")
    assert generate.qa.questions_per_image == 2 and generate.qa.prompt_template == qawriter.PROMPT_TEMPLATE


# Enough training for the writer to learn the reply's form on the world's language (the default writer's loss is
# ~0.25 by step 500, its form, before it learns what to copy), not enough to be right often: this test checks
# that real QA rows come out of generate; the default writer's rightness is its own self-check's (README).
SMALL = QAWriterConfig(
    hidden=64,
    layers=2,
    heads=4,
    learning_rate=3e-3,
    steps=400,
    warmup_steps=30,
    batch_size=8,
    captions=(2, 3),
    train_scenes=300,
    check_scenes=8,
    min_right=0.0,
)


WRITER_FORMS = re.compile(
    r"^(What colour is the \w+|How many \w+ are there|Where is the \w+"
    r"|Is there a \w+ in this image)\?$"
)


@pytest.mark.slow
def test_generate_on_a_tiny_world_writes_qa_rows_with_its_writer(tmp_path, monkeypatch):
    """A tiny world's QA config (world_qa_config, as `pipelines.run --qa`) trains its writer, and one generate
    shard runs it on every image's captions through the hf engine: parsed QA rows of the writer's forms.
    About 25 s on one loaded core."""
    import torch

    from clipdpo import steps
    from clipdpo.artifacts import Artifact
    from clipdpo.storage import Storage
    from clipdpo_world import qawriter_build
    from clipdpo_world.build import WorldConfig, build
    from clipdpo_world.clip import ClipConfig
    from clipdpo_world.lvlm import LvlmConfig
    from clipdpo_world.selfcheck import Bars
    from clipdpo_world.stageconfigs import world_qa_config

    torch.set_num_threads(1)
    monkeypatch.setattr(qawriter_build, "DEFAULT", SMALL)
    cfg = WorldConfig(
        train_images=64,
        heldout_images=12,
        pool_images=4,
        samples_per_image=3,
        clip=ClipConfig(steps=3, batch_size=16, min_pairwise_accuracy=0.0),
        lvlm=LvlmConfig(steps=80, batch_size=8, min_cover=0.0, attempts=1),
        checks=Bars(enforced=False),  # too small to answer questions: measured, not required
    )
    paths = build(cfg, str(tmp_path / "world"), say=lambda _: None)
    assert paths.configs["generate"]["qa"] == {"enabled": False}  # the stage configs' own; the lab's run sets it
    qa = world_qa_config(paths.root, say=lambda _: None)
    assert qa["enabled"] and qa["model"]["path"].startswith(paths.root + "/qa-writer-")
    # greedy: this writer has learnt the reply's form, which sampling at 0.7 still breaks now and then
    generate = {**paths.configs["generate"], "qa": {**qa, "sampling": {**qa["sampling"], "temperature": 0.0}}}
    run = str(tmp_path / "run")
    steps.ingest_step(run, paths.images, json.dumps(paths.configs["ingest"]))
    for last in (False, True):
        steps.generate_step(run, json.dumps(generate), 0, 1, finalize=last)
    candidates = Artifact.open(Storage(), steps.artifact_uri(run, "generate"), kind="candidates")
    rows = [row for name in candidates.shard_names for row in candidates.read_shard(name).to_pylist()]
    qa_rows = [row for row in rows if row["kind"] == "qa"]
    stats = json.loads(Storage().read_bytes(steps.artifact_uri(run, "generate") + "/manifest.json"))["stats"]
    # 4 images x 3 samples, each written or counted empty (an 80-step LVLM may stop at once)
    assert stats["images"] == 4 and stats["captions"] + stats["captions_empty"] == 12
    assert stats["qa_rows"] == len(qa_rows)
    # every image's captions went to the writer and came back as rows (a 3-step LVLM wrote bytes, on which this
    # writer lost its form: 0 rows; 80 steps write the world's phrases)
    assert len({row["image_id"] for row in qa_rows}) >= 3, json.dumps(stats)
    for row in qa_rows:
        item = QAItem(row["question"], row["answer_pos"], row["answer_neg"])
        assert WRITER_FORMS.match(item.question) and row["model"] == "world-qa-writer", item
        assert item.correct.lower() != item.wrong.lower()
