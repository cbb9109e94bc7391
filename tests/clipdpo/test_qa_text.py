"""QA parsing of LLM output and the question -> check-caption rules."""

import pytest

from clipdpo.generate.qa_parse import QAItem, parse_qa
from clipdpo.score.qa_caption import question_to_caption, yes_no


def test_labelled_blocks_with_numbering_bold_and_synonyms():
    text = """Sure! Here are the questions:
1. **Question:** What color is the sofa?
   **Correct answer:** Red
   **Wrong answer:** Green

2. Q: How many dogs are there?
A+: two
A-: three
"""
    result = parse_qa(text, max_items=2)
    assert result.items == [
        QAItem("What color is the sofa?", "Red", "Green"),
        QAItem("How many dogs are there?", "two", "three"),
    ]
    assert result.unparseable == 0


def test_incomplete_blocks_are_counted_and_dropped_and_max_items_applies():
    text = (
        "Question: Is it sunny?\nCorrect: yes\n\nQuestion: What is on the table?\nCorrect: a cup\nWrong: a plate\n"
        "Question: Where is the cat?\nCorrect: on the bed\nWrong: under the bed\n"
    )
    result = parse_qa(text, max_items=1)
    assert result.items == [QAItem("What is on the table?", "a cup", "a plate")]
    assert result.unparseable == 1


def test_json_in_a_code_fence_and_value_on_next_line():
    text = (
        'Here you go:\n```json\n[{"question": "What is the man holding?", "correct_answer": "a kite", '
        '"wrong_answer": "a bag"}, {"question": "Is he smiling?", "answer": "yes"}]\n```'
    )
    result = parse_qa(text, max_items=5)
    assert result.items == [QAItem("What is the man holding?", "a kite", "a bag")]
    assert result.unparseable == 1
    nextline = parse_qa("Question:\nWhat is it?\nCorrect:\nA dog\nWrong:\nA cat", 2)
    assert nextline.items == [QAItem("What is it?", "A dog", "A cat")]


def test_garbage_gives_nothing():
    assert parse_qa("lorem ipsum dolor", 2).items == []
    assert parse_qa("", 2).unparseable == 0


@pytest.mark.parametrize(
    "question,answer,expected",
    [
        ("What is the man holding?", "a frisbee", "the man holding a frisbee"),
        ("What color is the sofa?", "Red.", "the sofa is Red"),
        ("Is there a dog on the sofa?", "Yes, there is.", "there is a dog on the sofa"),
        ("Is there a dog on the sofa?", "No", "there is no dog on the sofa"),
        ("How many people are in the room?", "three", "three people in the room"),
        ("Where is the cat?", "on the bed", "the cat on the bed"),
        ("What kind of animal is lying on the grass?", "a dog", "a dog animal lying on the grass"),
        ("Is the dog sleeping on the sofa?", "no", "the dog is not sleeping on the sofa"),
        ("Who is holding the umbrella?", "a woman", "a woman holding the umbrella"),
        ("Why is it dark", "night time", "Why is it dark night time"),
    ],
)
def test_question_to_caption(question, answer, expected):
    assert question_to_caption(question, answer) == expected


def test_yes_no():
    assert yes_no("Yes, it is.") is True and yes_no("no.") is False and yes_no("a dog") is None


def test_a_wrong_answer_equal_to_the_correct_one_makes_no_pair():
    text = (
        "Question: What colour is the horse?\nCorrect: brown\nWrong: Brown\n"
        "Question: Is there a ball?\nCorrect: No\nWrong: Yes"
    )
    result = parse_qa(text, max_items=2)
    assert [item.question for item in result.items] == ["Is there a ball?"] and result.unparseable == 1
