"""The HF engine (generate's captions, evaluate's captions and yes/no by logits) on tiny Qwen2.5-VL and Qwen3-VL.

A batch mixes images of three sizes, so its rows have different numbers of image tokens and are left-padded
differently: each row's multimodal rotary positions must come out as when it runs alone.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from test_qwen_vl import FAMILIES
from tiny_qwen import build_tiny_qwen

from clipdpo.engines import HFEngine, ImageRequest, ModelSpec, Sampling, option_token_ids

SIZES = [(40, 40), (48, 32), (32, 56)]
PROMPTS = ["describe the image", "what is in this picture of a park near the river ?", "hi"]


@pytest.fixture(scope="module", params=FAMILIES)
def engine(request, tmp_path_factory) -> HFEngine:
    torch.set_num_threads(1)
    # O(1) weights (unit_scale.py): greedy tokens that a position bug would change
    path = build_tiny_qwen(str(tmp_path_factory.mktemp("models") / request.param), request.param, unit_scale=True)
    return HFEngine(ModelSpec(name=request.param, path=path, engine="hf", device="cpu"), batch_size=3)


def requests(n: int = 1) -> list[ImageRequest]:
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for w, h in SIZES]
    return [ImageRequest(image, prompt, n, seed=k) for k, (image, prompt) in enumerate(zip(images, PROMPTS))]


def greedy_by_forward(engine: HFEngine, request: ImageRequest, steps: int) -> str:
    """Greedy decoding by hand: the whole sequence through the model's forward at every step (no cache), the
    model placing every position itself from the processor's outputs (the new tokens are text)."""
    inputs = engine.processor(
        images=[request.image], text=[engine._template(request.prompt, True)], return_tensors="pt"
    )
    ids, types = inputs["input_ids"], inputs["mm_token_type_ids"]
    for _ in range(steps):
        with torch.no_grad():
            logits = engine.model(
                input_ids=ids,
                mm_token_type_ids=types,
                pixel_values=inputs["pixel_values"],
                image_grid_thw=inputs["image_grid_thw"],
                use_cache=False,
            ).logits
        token = logits[:, -1].argmax(-1, keepdim=True)
        if int(token) == engine.tokenizer.eos_token_id:
            break
        ids, types = torch.cat([ids, token], 1), torch.cat([types, torch.zeros_like(token, dtype=types.dtype)], 1)
    new = ids[0, inputs["input_ids"].shape[1] :]
    return engine.tokenizer.decode(new, skip_special_tokens=True).strip()


def test_greedy_captions_of_a_mixed_batch_are_each_image_alone(engine):
    greedy = Sampling(temperature=0.0, max_new_tokens=8)
    batched = engine.caption(requests(), greedy)
    alone = [engine.caption([request], greedy)[0] for request in requests()]
    assert batched == alone
    # and what the model's own forward gives: a processor output the engine lost (mm_token_type_ids: 1-D
    # positions throughout, in the batch and alone alike) would change these
    assert [captions[0] for captions in alone] == [greedy_by_forward(engine, r, 8) for r in requests()]
    assert all(len(captions) == 1 and captions[0] for captions in batched)
    assert len({captions[0] for captions in batched}) > 1  # the images and prompts lead somewhere different


def test_sampled_captions_give_each_request_its_samples(engine):
    sampled = engine.caption(requests(n=2), Sampling(temperature=1.0, top_p=1.0, max_new_tokens=6))
    assert [len(captions) for captions in sampled] == [2, 2, 2]
    assert all(all(isinstance(text, str) for text in captions) for captions in sampled)


def test_yes_no_by_logits_matches_a_forward_pass_per_request(engine):
    """evaluate's closed questions: the batched, left-padded choice equals one forward per request."""
    chosen = engine.choose(requests(), ["yes", "no"])
    yes_ids, no_ids = option_token_ids(engine.tokenizer, ["yes", "no"])
    margins = []
    for request, got in zip(requests(), chosen):
        inputs = engine.processor(
            images=[request.image], text=[engine._template(request.prompt, True)], return_tensors="pt"
        )
        with torch.no_grad():
            logits = engine.model(**inputs).logits[0, -1]
        margins.append(float(logits[yes_ids].max() - logits[no_ids].max()))
        assert got == ("yes" if margins[-1] > 0 else "no")
    assert min(abs(m) for m in margins) > 1e-3  # no choice decided by rounding
