"""The two engines send the same prompt token ids for a text-only chat, and seed every sample from a hash
of what it is, so no two items or samples share a random stream. No vLLM here: VLLMEngine's methods run
against a recording stand-in for vllm.LLM, and SamplingParams against a small stand-in module."""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass

import pytest
from PIL import Image

from clipdpo.engines import HFEngine, ImageRequest, Sampling, VLLMEngine, chat_batch, chat_prompt_ids
from clipdpo.seeds import sample_seed


def bos_adding_tokenizer():
    """The demo's tiny tokenizer with a Llama-style post-processor that adds BOS on encode, and a chat template
    that writes its own BOS: the shape where tokenizing the rendered text with special tokens doubles it."""
    from tokenizers import processors

    from clipdpo.demo.models import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    bos = tokenizer.bos_token_id
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    tokenizer.chat_template = "{{ bos_token }}{% for m in messages %}USER: {{ m['content'] }} {% endfor %}ASSISTANT:"
    tokenizer.padding_side = "left"
    return tokenizer


@dataclass
class _Output:
    text: str


@dataclass
class _RequestOutput:
    outputs: list


class RecordingLLM:
    """vllm.LLM's generate as the engine calls it: records prompts and params, replies with the seed."""

    def __init__(self):
        self.prompts, self.params = [], []

    def generate(self, prompts, params, use_tqdm=False):
        self.prompts.extend(prompts)
        self.params.extend(params)
        return [_RequestOutput([_Output(f"seed {p.seed}")]) for p in params]


@pytest.fixture
def fake_vllm(monkeypatch):
    module = types.ModuleType("vllm")

    @dataclass
    class SamplingParams:
        n: int = 1
        temperature: float = 1.0
        top_p: float = 1.0
        max_tokens: int = 16
        seed: int | None = None

    module.SamplingParams = SamplingParams
    monkeypatch.setitem(sys.modules, "vllm", module)
    return module


def vllm_engine(tokenizer, processor=None) -> tuple[VLLMEngine, RecordingLLM]:
    engine = VLLMEngine.__new__(VLLMEngine)  # the methods under test, without loading a model
    engine.llm, engine.tokenizer, engine.processor = RecordingLLM(), tokenizer, processor
    return engine, engine.llm


def test_both_engines_send_the_same_chat_token_ids_with_one_bos(fake_vllm):
    tokenizer = bos_adding_tokenizer()
    prompts = ["a photo of a dog", "two people walking in the park near the river"]
    engine, llm = vllm_engine(tokenizer)
    engine.chat(prompts, Sampling())
    sent_by_vllm = [p["prompt_token_ids"] for p in llm.prompts]

    batch = chat_batch(tokenizer, prompts)  # what HFEngine.chat feeds generate()
    sent_by_hf = [
        [t for t, keep in zip(row, mask) if keep]
        for row, mask in zip(batch["input_ids"].tolist(), batch["attention_mask"].tolist())
    ]
    assert sent_by_vllm == sent_by_hf
    bos = tokenizer.bos_token_id
    for ids in sent_by_vllm:
        assert ids[0] == bos and ids[1] != bos and ids.count(bos) == 1
    # what vLLM made of the rendered string before (it tokenizes a text prompt with special tokens): two BOS
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompts[0]}], add_generation_prompt=True, tokenize=False
    )
    assert tokenizer(text)["input_ids"][:2] == [bos, bos]
    assert chat_prompt_ids(tokenizer, prompts[0]) == tokenizer(text)["input_ids"][1:]


def test_hf_engine_chat_uses_the_shared_batch(monkeypatch):
    """HFEngine.chat passes chat_batch's tensors to generate (not a re-tokenized string)."""
    import torch

    tokenizer = bos_adding_tokenizer()
    engine = HFEngine.__new__(HFEngine)
    engine.torch, engine.tokenizer, engine.batch_size, engine.progress = torch, tokenizer, 8, None
    seen = []
    engine._generate = lambda inputs, sampling, n: (
        seen.append(inputs["input_ids"].tolist()) or [""] * len(inputs["input_ids"])
    )
    engine.chat(["a dog", "a red sofa in the park"], Sampling())
    assert seen == [chat_batch(tokenizer, ["a dog", "a red sofa in the park"])["input_ids"].tolist()]


def test_vllm_caption_seeds_each_sample_from_a_hash_not_seed_plus_k(fake_vllm):
    image = Image.new("RGB", (4, 4))
    processor = types.SimpleNamespace(apply_chat_template=lambda messages, **_: "USER: <image> describe")
    engine, llm = vllm_engine(tokenizer=None, processor=processor)
    requests = [ImageRequest(image, "describe", n=3, seed=100), ImageRequest(image, "describe", n=2, seed=101)]
    texts = engine.caption(requests, Sampling())
    seeds = [p.seed for p in llm.params]
    assert all(p.n == 1 for p in llm.params)  # one vLLM request per sample: vLLM would seed n samples seed + i
    assert seeds == [
        sample_seed(100, 0),
        sample_seed(100, 1),
        sample_seed(100, 2),
        sample_seed(101, 0),
        sample_seed(101, 1),
    ]
    assert len(set(seeds)) == 5 and 101 not in seeds  # request 100's sample 1 is not request 101's sample 0
    assert texts == [[f"seed {s}" for s in seeds[:3]], [f"seed {s}" for s in seeds[3:]]]


class RecordingEngine:
    """An Engine that records the requests it is asked and answers each sample with its seed."""

    def __init__(self):
        self.requests: list[ImageRequest] = []

    def caption(self, requests, sampling):
        self.requests.extend(requests)
        return [[f"{r.seed}/{sample_seed(r.seed, k)}" for k in range(r.n)] for r in requests]


def sampled_task(tmp_path, ids: list[str], samples: int = 4):
    import io

    from clipdpo.evaluate.config import DecodingConfig
    from clipdpo.evaluate.data import Item
    from clipdpo.evaluate.infer import Task

    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), "red").save(buffer, format="PNG")
    (tmp_path / "img.png").write_bytes(buffer.getvalue())
    items = [Item(id=i, image=str(tmp_path / "img.png"), prompt="Describe this image.") for i in ids]
    return Task(
        "amber_g", items, max_new_tokens=8, decoding=DecodingConfig(temperature=0.7, top_p=0.9, samples=samples, seed=7)
    )


def answer(tmp_path, task, chunk_size: int, folder: str) -> tuple[dict, RecordingEngine]:
    from clipdpo.engines import ModelSpec
    from clipdpo.evaluate.infer import Responder
    from clipdpo.storage import Storage

    engine = RecordingEngine()
    responder = Responder(
        ModelSpec("m", "m", engine="hf"), str(tmp_path / folder), Storage(), lambda: engine, chunk_size=chunk_size
    )
    return responder.answer(task), engine


def test_evaluation_samples_never_share_a_stream_and_do_not_depend_on_chunking_or_order(tmp_path):
    ids = [f"item-{k}" for k in range(40)]
    task = sampled_task(tmp_path, ids)
    responses, engine = answer(tmp_path, task, chunk_size=7, folder="a")
    sample_seeds = [sample.split("/")[1] for samples in responses.values() for sample in samples]
    assert len(sample_seeds) == 40 * 4 and len(set(sample_seeds)) == 40 * 4  # no two samples share a seed
    request_seeds = [r.seed for r in engine.requests]
    # the old seeds were 7 + place: item k's sample 1 drew what item k+1's sample 0 drew under vLLM (seed + i)
    assert not set(request_seeds) & set(range(7, 7 + 40 * 4))
    from clipdpo.evaluate.infer import item_seed

    assert request_seeds == [item_seed(7, i) for i in ids]
    # other chunking, other order: each item draws what it drew
    shuffled = sampled_task(tmp_path, list(reversed(ids)))
    again, _ = answer(tmp_path, shuffled, chunk_size=5, folder="b")
    assert again == responses
