"""The QA writer's ground-truth stand-in: the generate stage's QA rows from an image's captions, answered by the
scene's truth, and the held-out questions the small effect test asks."""

from __future__ import annotations

import pyarrow as pa
import pytest

from clipdpo.schemas import CANDIDATES
from clipdpo_world import language, qatruth, qawriter
from clipdpo_world.scene import ObjectGroup, Scene

CUP = Scene("s-1", "plain", (ObjectGroup("cup", "white", 1, 0),), 0)  # its partner, the book, is absent
CUP_AND_BOOK = Scene("s-2", "field", (ObjectGroup("cup", "yellow", 2, 0), ObjectGroup("book", "blue", 1, 2)), 0)
TRUTH = {scene.image_id: scene.to_dict() for scene in (CUP, CUP_AND_BOOK)}


def candidates(rows: list[tuple[str, str]]) -> pa.Table:
    """A candidates shard of caption rows (image id, text)."""
    empty = dict.fromkeys(CANDIDATES.names)
    return pa.Table.from_pylist(
        [{**empty, "image_id": image, "kind": "caption", "text": text} for image, text in rows], schema=CANDIDATES
    )


def test_qa_rows_are_the_generate_stages_with_answers_from_the_truth():
    hallucinated = "a picture of a white cup on the left and a blue book in the middle."
    shard = candidates(
        [
            ("s-1.png", language.caption(CUP)),
            ("s-2.png", language.caption(CUP_AND_BOOK)),
            ("s-1.png", hallucinated),  # the minority's absent book does not make its answer "Yes"
            ("s-1.png", language.caption(CUP)),
        ]
    )
    rows, stats = qatruth.qa_candidates(shard, TRUTH, qatruth.qa_config())
    got = rows.to_pylist()
    assert stats["qa_rows"] == 4 and stats["qa_unparseable"] == 0
    assert [row["candidate_id"] for row in got] == [
        "s-1.png/world-qa-truth/q0",
        "s-1.png/world-qa-truth/q1",
        "s-2.png/world-qa-truth/q0",
        "s-2.png/world-qa-truth/q1",
    ]
    assert all(row["kind"] == "qa" and row["prompt"] == row["question"] for row in got)
    scenes = {"s-1.png": CUP, "s-2.png": CUP_AND_BOOK}
    items = [qawriter.QAItem(row["question"], row["answer_pos"], row["answer_neg"]) for row in got]
    assert all(qawriter.is_right(scenes[row["image_id"]], item) for row, item in zip(got, items))
    assert (items[0].question, items[0].correct) == ("What colour is the cup?", "white")  # plain: colour first
    assert (items[1].question, items[1].correct) == ("Is there a book in this image?", "No")
    assert (items[2].question, items[2].correct) == ("How many cups are there?", "two")  # field: count first
    assert (items[3].question, items[3].correct) == ("Is there a book in this image?", "Yes")


def test_the_stand_in_refuses_prompts_of_other_images():
    qa = qatruth.qa_config()
    writer = qatruth.TruthWriter([(CUP, [language.caption(CUP)]), (CUP_AND_BOOK, [language.caption(CUP_AND_BOOK)])], qa)
    swapped = [qawriter.qa_prompt([language.caption(s)], qa.questions_per_image) for s in (CUP_AND_BOOK, CUP)]
    with pytest.raises(ValueError, match="not those of the images"):
        writer.chat(swapped, qa.sampling)


def test_heldout_questions_are_right_by_the_truth():
    questions = qatruth.heldout_questions([CUP, CUP_AND_BOOK])
    assert len(questions) == 4
    assert all(qawriter.is_right(scene, item) for scene, item in questions)
