"""Two generation engines behind one interface: vLLM (GPU) and Hugging Face transformers, shared by
the generate stage (captions, QA) and the evaluate stage (benchmark replies).

Both take the same requests and build prompts with the model's own chat template, so a run
on either engine asks the model the same thing. vLLM is imported only when chosen.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from PIL import Image

from clipdpo.config import AT_LEAST_1, NON_NEGATIVE, PROBABILITY_MASS, SEED, check_ranges
from clipdpo.errors import UserError
from clipdpo.seeds import sample_seed

if TYPE_CHECKING:
    from clipdpo.progress import Progress

log = logging.getLogger("clipdpo.engines")


ENGINE_NAMES = ("hf", "vllm")  # the keys of ENGINES (defined below, after the engine classes)


class EngineUnavailable(RuntimeError, UserError):
    """The engine a model spec names cannot run here (its package is not installed)."""


@dataclass(frozen=True)
class ModelSpec:
    """One model of the pool. `path`: a Hugging Face id or a local folder."""

    name: str
    path: str
    engine: str = "vllm"  # vllm | hf
    dtype: str = "auto"  # auto | bfloat16 | float16 | float32
    device: str = "auto"  # hf engine only
    gpu_memory_utilization: float = 0.45  # vllm: captioner and LLM share one GPU
    max_model_len: int = 4096
    tensor_parallel_size: int = 1
    trust_remote_code: bool = False

    RANGES = {
        "gpu_memory_utilization": PROBABILITY_MASS,
        "max_model_len": AT_LEAST_1,
        "tensor_parallel_size": AT_LEAST_1,
    }

    def __post_init__(self) -> None:
        if self.engine not in ENGINE_NAMES:
            raise ValueError(f"model {self.name!r}: engine {self.engine!r}; expected one of {list(ENGINE_NAMES)}")
        check_ranges(self)


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.7
    top_p: float = 0.9
    max_new_tokens: int = 128
    seed: int = 0

    RANGES = {"temperature": NON_NEGATIVE, "top_p": PROBABILITY_MASS, "max_new_tokens": AT_LEAST_1, "seed": SEED}

    def __post_init__(self) -> None:
        check_ranges(self)


@dataclass(frozen=True)
class ImageRequest:
    image: Image.Image
    prompt: str
    n: int  # samples for this (image, prompt)
    seed: int  # the request's; sample k draws from clipdpo.seeds.sample_seed(seed, k) where an engine seeds samples


class Engine(Protocol):
    def caption(self, requests: list[ImageRequest], sampling: Sampling) -> list[list[str]]:
        """`n` generations per request, in request order."""

    def chat(self, prompts: list[str], sampling: Sampling) -> list[str]:
        """One reply per text-only user message."""

    def choose(self, requests: list[ImageRequest], options: list[str]) -> list[str]:
        """Per request, the option whose first token the model rates highest as the reply's first token."""


def option_token_ids(tokenizer, options: list[str]) -> list[list[int]]:
    """First-token ids of each option, written as a reply may start it (as given, lower-case, after a space).

    A first token shared between options (a bare space piece, <unk>) tells nothing and is dropped; an
    option left with no token of its own cannot be scored by logits and is an error."""
    firsts = []
    for option in options:
        variants = {option, option.lower(), " " + option, " " + option.lower()}
        firsts.append({ids[0] for ids in (tokenizer.encode(v, add_special_tokens=False) for v in variants) if ids})
    ids = [
        sorted(group - set().union(*(other for j, other in enumerate(firsts) if j != i)))
        for i, group in enumerate(firsts)
    ]
    for option, group in zip(options, ids):
        if not group:
            raise ValueError(
                f"option {option!r} shares every first token with another of {options}; "
                "the options cannot be told apart by logits"
            )
    return ids


def _user_message(prompt: str, with_image: bool) -> list[dict]:
    if not with_image:  # text-only chat templates expect plain string content
        return [{"role": "user", "content": prompt}]
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]


def chat_prompt_ids(tokenizer, prompt: str) -> list[int]:
    """The token ids a text-only chat sends, the same for both engines: the chat template rendered, then
    tokenized without the tokenizer's own special tokens (the template already writes any BOS it wants;
    tokenizing the rendered text with them, as vLLM's generate does for a string, adds a second one)."""
    text = tokenizer.apply_chat_template(_user_message(prompt, False), add_generation_prompt=True, tokenize=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def chat_batch(tokenizer, prompts: list[str]):
    """The HF engine's padded batch of chat prompts (the tokenizer's padding side, PyTorch tensors)."""
    return tokenizer.pad({"input_ids": [chat_prompt_ids(tokenizer, p) for p in prompts]}, return_tensors="pt")


class HFEngine:
    """transformers generate(), batched; CPU or GPU."""

    def __init__(self, spec: ModelSpec, batch_size: int = 8, vision: bool = True):
        import torch
        from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

        self.torch = torch
        device = spec.device if spec.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = "auto" if spec.dtype == "auto" else getattr(torch, spec.dtype)
        loader = AutoModelForImageTextToText if vision else AutoModelForCausalLM
        self.model = loader.from_pretrained(spec.path, dtype=dtype, trust_remote_code=spec.trust_remote_code)
        self.model.to(device).eval()  # type: ignore[arg-type]  # transformers types `to` as a decorated function
        self.device = device
        if vision:
            self.processor = AutoProcessor.from_pretrained(spec.path, trust_remote_code=spec.trust_remote_code)
            self.tokenizer = self.processor.tokenizer
        else:
            self.processor = None
            self.tokenizer = AutoTokenizer.from_pretrained(spec.path, trust_remote_code=spec.trust_remote_code)
        self.tokenizer.padding_side = "left"  # decoder-only generation pads on the left
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.batch_size = batch_size
        self.progress: Progress | None = None  # the caller sets it: advanced by each batch's requests

    def _advance(self, n: int) -> None:
        if self.progress is not None:
            self.progress.advance(n)

    def _template(self, prompt: str, with_image: bool) -> str:
        owner = self.processor if self.processor is not None else self.tokenizer
        return owner.apply_chat_template(_user_message(prompt, with_image), add_generation_prompt=True, tokenize=False)

    def _generate(self, inputs, sampling: Sampling, n: int) -> list[str]:
        # transformers' auto classes return a generic base whose `generate` mypy cannot bind
        generated = self.model.generate(  # type: ignore[misc]
            **inputs.to(self.device),
            do_sample=sampling.temperature > 0,
            temperature=sampling.temperature if sampling.temperature > 0 else None,
            top_p=sampling.top_p if sampling.temperature > 0 else None,
            max_new_tokens=sampling.max_new_tokens,
            num_return_sequences=n,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        new_tokens = generated[:, inputs["input_ids"].shape[1] :]
        return [text.strip() for text in self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]

    def caption(self, requests: list[ImageRequest], sampling: Sampling) -> list[list[str]]:
        out: list[list[str]] = [[] for _ in requests]
        # Requests with equal n batch together; the seed makes each batch reproducible.
        for start in range(0, len(requests), self.batch_size):
            positions = range(start, min(start + self.batch_size, len(requests)))
            for n in sorted({requests[i].n for i in positions}):
                group = [i for i in positions if requests[i].n == n]
                self.torch.manual_seed(requests[group[0]].seed)
                inputs = self.processor(
                    images=[requests[i].image for i in group],
                    text=[self._template(requests[i].prompt, True) for i in group],
                    return_tensors="pt",
                    padding=True,
                )
                texts = self._generate(inputs, sampling, n)
                for k, i in enumerate(group):
                    out[i] = texts[k * n : (k + 1) * n]
            self._advance(len(positions))
        return out

    def choose(self, requests: list[ImageRequest], options: list[str]) -> list[str]:
        token_ids = option_token_ids(self.tokenizer, options)
        chosen: list[str] = []
        for start in range(0, len(requests), self.batch_size):
            batch = requests[start : start + self.batch_size]
            inputs = self.processor(
                images=[r.image for r in batch],
                text=[self._template(r.prompt, True) for r in batch],
                return_tensors="pt",
                padding=True,
            )
            with self.torch.no_grad():
                logits = self.model(**inputs.to(self.device)).logits[:, -1, :].float()  # left padding: last = next
            best = self.torch.stack([logits[:, ids].max(dim=1).values for ids in token_ids], dim=1).argmax(dim=1)
            chosen.extend(options[i] for i in best.tolist())
            self._advance(len(batch))
        return chosen

    def chat(self, prompts: list[str], sampling: Sampling) -> list[str]:
        replies: list[str] = []
        for start in range(0, len(prompts), self.batch_size):
            batch = prompts[start : start + self.batch_size]
            self.torch.manual_seed(sampling.seed + start)
            inputs = chat_batch(self.tokenizer, batch)
            replies.extend(self._generate(inputs, sampling, 1))
            self._advance(len(batch))
        return replies


class VLLMEngine:
    """vLLM offline inference with prefix caching; one image's prompts are sent together."""

    def __init__(self, spec: ModelSpec, vision: bool = True):
        try:
            from vllm import LLM
        except ImportError as err:
            raise EngineUnavailable(
                f"model {spec.name!r} runs on engine 'vllm' (the default when a model spec names no engine), "
                'which is not installed here: set "engine": "hf" in its spec to run it on transformers, or run '
                "in the generate image (Dockerfiles/generate.Dockerfile), which has vLLM"
            ) from err
        self.llm = LLM(
            model=spec.path,
            dtype=spec.dtype,
            enable_prefix_caching=True,
            gpu_memory_utilization=spec.gpu_memory_utilization,
            max_model_len=spec.max_model_len,
            tensor_parallel_size=spec.tensor_parallel_size,
            trust_remote_code=spec.trust_remote_code,
            limit_mm_per_prompt={"image": 1} if vision else {"image": 0},
        )
        self.tokenizer = self.llm.get_tokenizer()
        if vision:
            from transformers import AutoProcessor

            self.processor = AutoProcessor.from_pretrained(spec.path, trust_remote_code=spec.trust_remote_code)
        else:
            self.processor = None

    def _params(self, sampling: Sampling, n: int, seed: int):
        from vllm import SamplingParams

        return SamplingParams(
            n=n, temperature=sampling.temperature, top_p=sampling.top_p, max_tokens=sampling.max_new_tokens, seed=seed
        )

    def caption(self, requests: list[ImageRequest], sampling: Sampling) -> list[list[str]]:
        inputs = [
            {
                "prompt": self.processor.apply_chat_template(
                    _user_message(r.prompt, True), add_generation_prompt=True, tokenize=False
                ),
                "multi_modal_data": {"image": r.image},
            }
            for r in requests
        ]
        # one vLLM request per sample, each with its own seed: a request with n > 1 would seed its samples
        # seed, seed + 1, ... and share streams with the requests seeded next to it
        owners = [i for i, r in enumerate(requests) for _ in range(r.n)]
        prompts = [inputs[i] for i in owners]
        params = [self._params(sampling, 1, sample_seed(r.seed, k)) for r in requests for k in range(r.n)]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        texts: list[list[str]] = [[] for _ in requests]
        for i, output in zip(owners, outputs):
            texts[i].append(output.outputs[0].text.strip())
        return texts

    def choose(self, requests: list[ImageRequest], options: list[str]) -> list[str]:
        from vllm import SamplingParams

        token_ids = option_token_ids(self.tokenizer, options)
        owner = {token: index for index, ids in enumerate(token_ids) for token in ids}
        # greedy over the options' tokens only: the argmax of their logits, which is what is compared
        params = SamplingParams(n=1, temperature=0.0, max_tokens=1, allowed_token_ids=sorted(owner))
        inputs = [
            {
                "prompt": self.processor.apply_chat_template(
                    _user_message(r.prompt, True), add_generation_prompt=True, tokenize=False
                ),
                "multi_modal_data": {"image": r.image},
            }
            for r in requests
        ]
        outputs = self.llm.generate(inputs, params, use_tqdm=False)
        return [options[owner[output.outputs[0].token_ids[0]]] for output in outputs]

    def chat(self, prompts: list[str], sampling: Sampling) -> list[str]:
        # token ids, not the rendered text: vLLM would tokenize a string with a BOS the HF engine does not send
        inputs = [{"prompt_token_ids": chat_prompt_ids(self.tokenizer, p)} for p in prompts]
        params = [self._params(sampling, 1, sampling.seed + i) for i in range(len(prompts))]
        outputs = self.llm.generate(inputs, params, use_tqdm=False)
        return [output.outputs[0].text.strip() for output in outputs]


ENGINES = {"hf": HFEngine, "vllm": VLLMEngine}


def load_engine(spec: ModelSpec, *, vision: bool, batch_size: int = 8) -> Engine:
    match spec.engine:
        case "hf":
            return HFEngine(spec, batch_size=batch_size, vision=vision)
        case "vllm":
            return VLLMEngine(spec, vision=vision)
        case other:
            raise ValueError(f"model {spec.name!r}: unknown engine {other!r}; expected one of {sorted(ENGINES)}")
