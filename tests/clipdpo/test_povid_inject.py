"""POVID's injection prompts (Table 6) and the validation of rewritten answers."""

from __future__ import annotations

import re

import pytest

from clipdpo.generate.povid_inject import extract_answer, injection_prompt, validate, validate_all

ORIGINAL = "Two men sit in a small boat on the water. One of them is rowing."


def test_prompts_carry_the_pair_and_the_output_format():
    prompt = injection_prompt("caption", "Describe this image.", ORIGINAL)
    assert "Q: Describe this image.\n\nA: " + ORIGINAL in prompt
    assert "co-occurring objects" in prompt and prompt.endswith("Answer: your answer")
    reasoning = injection_prompt("reasoning", "How many oars?", "Two.")
    assert '"Reason: xxx, Result: xxx" (Answer 2)' in reasoning and "Q: How many oars?" in reasoning
    with pytest.raises(ValueError, match="kind"):
        injection_prompt("vqa", "q", "a")
    with pytest.raises(ValueError, match="empty"):
        injection_prompt("caption", "q", "  ")


def test_answers_are_extracted_from_the_reply_formats():
    assert extract_answer("Answer: Two men fish from a red boat.") == "Two men fish from a red boat."
    assert extract_answer("Sure!\n**Answer:** Two men watch a television.\n") == "Two men watch a television."
    reply = "Answer 1: Reason: two oars are visible, Result: two.\nAnswer 2: Reason: three oars, Result: three."
    assert extract_answer(reply) == "Reason: three oars, Result: three."  # the corrupted copy, not Answer 1
    assert extract_answer("Two men watch a television.") is None


def test_unusable_injections_are_dropped_and_counted():
    def objects(text: str) -> set[str]:  # a stand-in for the scorer's object extraction
        return {w for w in re.findall(r"\w+", text.lower()) if w in ("man", "men", "boat", "television", "pole")}

    replies = [
        "Answer: Two men sit in a small boat on the water, fishing with a pole.",  # kept: adds an absent object
        "Answer: two men sit in a small boat on the water; one of them is rowing",  # the original again
        "I cannot help with that.",  # no answer
        "Answer: ",  # empty
        "Answer: Three men sit in a small boat on the water.",  # differs, but not in what the scorer sees
    ]
    injected, counts = validate_all(replies, [ORIGINAL] * 5, visible=objects)
    assert injected[0] == "Two men sit in a small boat on the water, fishing with a pole."
    assert injected[1:] == [None] * 4
    assert counts.as_dict() == {
        "kept": 1,
        "dropped_no_answer": 1,
        "dropped_empty": 1,
        "dropped_identical": 1,
        "dropped_no_visible_change": 1,
    }
    # without a scorer's view, a changed count is a change
    assert validate(replies[4], ORIGINAL) == ("Three men sit in a small boat on the water.", "kept")
    with pytest.raises(ValueError, match="replies"):
        validate_all(replies, [ORIGINAL])


@pytest.mark.slow  # two tiny models built and run
def test_rewrite_runs_the_prompts_through_real_engines(tmp_path):
    # The tiny models are untrained: their replies are noise, so this checks the round trip (both modalities,
    # request order, every reply validated and counted), not the quality of the injections.
    from PIL import Image

    from clipdpo.demo.models import build_tiny_llava, build_tiny_llm
    from clipdpo.engines import HFEngine, ModelSpec, Sampling
    from clipdpo.generate.povid_rewrite import GroundTruth, rewrite

    llm = HFEngine(ModelSpec("llm", build_tiny_llm(str(tmp_path / "llm")), engine="hf", device="cpu"), vision=False)
    vlm = HFEngine(ModelSpec("vlm", build_tiny_llava(str(tmp_path / "vlm")), engine="hf", device="cpu"))
    sampling = Sampling(temperature=0.0, max_new_tokens=8)
    items = [GroundTruth("Describe this image.", ORIGINAL), GroundTruth("How many oars?", "Two.", "reasoning")]
    for engine, image in ((llm, None), (vlm, Image.new("RGB", (32, 32), (200, 10, 10)))):
        batch = [GroundTruth(i.question, i.answer, i.kind, image) for i in items]
        injected, counts = rewrite(engine, batch, sampling)
        assert len(injected) == 2 and counts.kept + sum(counts.dropped.values()) == 2
        assert counts.kept == sum(x is not None for x in injected)
