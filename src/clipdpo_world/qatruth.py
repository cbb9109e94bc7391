"""The world QA writer's ground-truth stand-in: the replies the trained writer (qawriter) learns to write,
made by its rule from the pool's truth, for the small effect test.

The trained writer takes 8-15 CPU-minutes to train, too slow for `make test`, and it gets 70-85% of its
questions right, so a test on its rows would measure the writer as well as the QA path. The stand-in writes
what a perfect writer would: `qawriter.truth_items` (the writer's own training target) over the captions the
generate stage gave it and the scene of their image, as "Question: / Correct: / Wrong:" blocks that the
generate stage parses like any LLM's reply (generate.shard.qa_rows). Like povid_source's rewriter it knows the
truth of every pool image (the pool folder's truth.jsonl).
"""

from __future__ import annotations

from collections import Counter

import pyarrow as pa

from clipdpo.engines import ModelSpec, Sampling
from clipdpo.generate.config import QAConfig
from clipdpo.generate.qa_parse import QAItem
from clipdpo.generate.shard import qa_rows
from clipdpo.schemas import CANDIDATES
from clipdpo_world import language, qawriter
from clipdpo_world.povid_source import scene_from_truth
from clipdpo_world.scene import Scene
from clipdpo_world.stageconfigs import QA_SAMPLING


def qa_config() -> QAConfig:
    """The world's QA config (stageconfigs.world_qa_config) with the stand-in named as its model."""
    return QAConfig(
        enabled=True,
        model=ModelSpec(name="world-qa-truth", path="clipdpo_world.qatruth", engine="hf", dtype="float32"),
        questions_per_image=qawriter.QAWriterConfig().questions,
        sampling=Sampling(
            temperature=QA_SAMPLING["temperature"],
            top_p=QA_SAMPLING["top_p"],
            max_new_tokens=int(QA_SAMPLING["max_new_tokens"]),
        ),
        prompt_template=qawriter.PROMPT_TEMPLATE,
    )


class TruthWriter:
    """A chat engine for generate.shard.qa_rows: one reply per image, in the order qa_rows asks (`asked`: each
    image's scene and the captions its prompt shows). A prompt that is not the one expected is refused, so a
    reply never answers for another image."""

    def __init__(self, asked: list[tuple[Scene, list[str]]], qa: QAConfig):
        self.asked = asked
        self.qa = qa

    def chat(self, prompts: list[str], sampling: Sampling) -> list[str]:
        n, template = self.qa.questions_per_image, self.qa.prompt_template
        expected = [qawriter.qa_prompt(captions, n, template) for _, captions in self.asked]
        if prompts != expected:
            raise ValueError("TruthWriter: the prompts are not those of the images it was given, in their order")
        return [qawriter.reply(qawriter.truth_items(scene, captions, n)) for scene, captions in self.asked]

    # the rest of the Engine protocol: the stand-in writes QA replies only, it sees no image
    def caption(self, requests: list, sampling: Sampling) -> list[list[str]]:
        raise NotImplementedError("TruthWriter writes QA replies only; it does not caption")

    def choose(self, requests: list, options: list[str]) -> list[str]:
        raise NotImplementedError("TruthWriter writes QA replies only; it does not answer about images")


def captions_by_image(candidates: pa.Table) -> dict[str, list[str]]:
    """Each image's caption texts in row order, as generate.shard.generate_shard collects them for qa_rows."""
    out: dict[str, list[str]] = {}
    for image_id, kind, text in zip(*(candidates.column(name).to_pylist() for name in ("image_id", "kind", "text"))):
        if kind == "caption":
            out.setdefault(image_id, []).append(text)
    return out


def qa_candidates(candidates: pa.Table, truth: dict[str, dict], qa: QAConfig) -> tuple[pa.Table, Counter]:
    """The QA rows the generate stage writes for one candidates shard (its captions in, the stand-in as the LLM),
    and qa_rows' counts. `truth`: data.read_truth of the pool folder (ids without the `.png` of image ids)."""
    captions_of = captions_by_image(candidates)
    asked = [(scene_from_truth(truth[image_id.rsplit(".", 1)[0]]), texts) for image_id, texts in captions_of.items()]
    stats: Counter = Counter()
    rows = qa_rows(captions_of, qa, TruthWriter(asked, qa), stats)
    return pa.Table.from_pylist(rows, schema=CANDIDATES), stats


def heldout_questions(scenes: list[Scene], n: int = 2) -> list[tuple[Scene, QAItem]]:
    """The questions the stand-in asks of each scene when its captions are right (the correct caption alone),
    with their right and wrong answers: the QA pairs' forms (an attribute of the anchor, its partner there?)."""
    return [(scene, item) for scene in scenes for item in qawriter.truth_items(scene, [language.caption(scene)], n)]
