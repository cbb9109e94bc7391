"""The world LVLM: a LlavaForConditionalGeneration (small CLIP vision tower + small Llama) fine-tuned
on world images with captions carrying the co-occurrence bias, plus Yes/No questions.

Saved in Hugging Face format with its LlavaProcessor (tokenizer of the world's language with a chat
template and an `<image>` token), so generate, train and evaluate load it as they load LLaVA-1.5.
The bias: for `bias_fraction` of the images that hold one of a co-occurring pair without the other,
the training caption also names the absent partner, as web captions teach real LVLMs to do, and the
question whether an absent partner is there is answered "Yes" more often than not for one pair (cup/book,
`partner_answer`): so the model says "yes" to an absent partner of a present object more often than to other
absent objects, as LLaVA-1.5 does on POPE's adversarial split.

Two choices make the Yes/No answers learnable by a small model (measured on world 0: without them POPE stayed
at chance, 50%, through 3,200 steps): each example weighs the same in the loss (a caption's 30 tokens
outweighed a one-token answer 30 to 1 when the loss averaged tokens), and the input and output word
embeddings are tied, so the question's noun is the vector the model already matches against image patches
when it names what it sees.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from clipdpo.llava_chat import CHAT_TEMPLATE, SPECIAL_TOKENS
from clipdpo_world import language
from clipdpo_world.scene import KINDS, PAIRS, SIZE, Scene, render

log = logging.getLogger("clipdpo_world")


@dataclass(frozen=True)
class LvlmConfig:
    """Architecture and SFT of the world LVLM (a 3-layer 64-wide Llama on the world CLIP's tower)."""

    hidden: int = 64
    # 3 layers: with 2 the Yes/No answers came in a jump at an unpredictable step (POPE 86% by step 3,200 in one
    # training, still at chance at 2,800 in two others of the same world); with 3 by step 1,600 (world 0)
    layers: int = 3
    heads: int = 2
    vision_hidden: int = 64  # a tower of its own (vision_from_clip False) only
    vision_layers: int = 2
    patch_size: int = 8
    vision_from_clip: bool = True  # LLaVA's way: the (world) CLIP's image tower, frozen, penultimate layer
    vocab_size: int = 600
    tie_embeddings: bool = True  # see the module's docstring
    loss_per_example: bool = True  # see the module's docstring; False: the mean over every answer token of a batch
    bias_fraction: float = (
        0.4  # sampled CHAIR 9.5, Hal 24 at 0.3 with the Yes/No training (world 0): too little to unlearn
    )
    question_bias: float = 0.6  # partner_answer: how often an absent partner of the strongly biased pairs is a "Yes"
    question_bias_pairs: int = 1  # scene.PAIRS[:n] are strongly biased (cup/book)
    # captions "learn to see" in a jump past step ~1,200; Yes/No answers come later (3 layers, 4,000 steps, world 0:
    # POPE random accuracy 64% at step 1,200, 77% at 1,600, 86% at 2,400, 90% at 2,800)
    steps: int = 4000
    batch_size: int = 32
    learning_rate: float = 1e-3
    warmup_steps: int = 100
    caption_share: float = 0.5  # of training examples; the rest: main-object answers (0.1) and Yes/No questions
    seed: int = 0
    min_cover: float = 0.9  # greedy coverage of held-out objects the build requires
    # SFT runs from a new initialisation when one misses the self-checks: the Yes/No answers come in a jump that
    # one initialisation of a world made by step ~1,600 and another (world 1) not in 4,000 steps. Measured on
    # worlds 0-4 (pinned AVX2): 4 of 8 attempts missed (the first of worlds 1 and 2, both of world 4), so 2
    # attempts refused world 4 (its third passed); at one miss in two, 4 attempts leave ~6% of worlds unbuilt.
    # A world passing at attempt k is the same whatever this number (attempt k's seed: lvlm.seed + 1000 x world
    # seed + 100 x (k - 1)).
    attempts: int = 4


def build_tokenizer(corpus: list[str], vocab_size: int):
    """A byte-level BPE over the world's language: its words become single tokens, other text still encodes."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def llava_config(tokenizer, cfg: LvlmConfig, clip_tower: tuple[dict, dict] | None = None):
    """The world LLaVA's architecture: the world CLIP's tower (cfg.vision_from_clip) or a small random one, and a
    small Llama over the tokenizer's vocabulary."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    from clipdpo_world import tower

    if clip_tower is not None and cfg.vision_from_clip:
        vision = tower.hf_vision_config(clip_tower[0])
    else:
        vision = CLIPVisionConfig(
            hidden_size=cfg.vision_hidden,
            intermediate_size=2 * cfg.vision_hidden,
            num_hidden_layers=cfg.vision_layers,
            num_attention_heads=2,
            image_size=SIZE,
            patch_size=cfg.patch_size,
        )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden,
        intermediate_size=2 * cfg.hidden,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        num_key_value_heads=cfg.heads,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=cfg.tie_embeddings,
    )
    return LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-2 if cfg.vision_from_clip else -1,
        vision_feature_select_strategy="default",
    )


def build_model(tokenizer, cfg: LvlmConfig, clip_tower: tuple[dict, dict] | None = None):
    """A LLaVA for the world; `clip_tower` (open_clip model config, `visual` state dict) becomes its
    frozen vision tower when given (cfg.vision_from_clip), else the tower is random and trains."""
    from transformers import CLIPImageProcessor, LlavaForConditionalGeneration, LlavaProcessor

    from clipdpo_world import tower

    if cfg.vision_from_clip and clip_tower is None:
        raise ValueError("LvlmConfig.vision_from_clip: pass the world CLIP's (model config, visual state dict)")
    torch.manual_seed(cfg.seed)
    config = llava_config(tokenizer, cfg, clip_tower)
    vision = config.vision_config
    model = LlavaForConditionalGeneration(config)
    if clip_tower is not None and cfg.vision_from_clip:  # (vision_from_clip without one was refused above)
        state = tower.hf_vision_state(clip_tower[1], vision.num_hidden_layers)
        model.model.vision_tower.load_state_dict(state, strict=True)
        model.model.vision_tower.requires_grad_(False)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": SIZE}, crop_size={"height": SIZE, "width": SIZE}),
        tokenizer=tokenizer,
        patch_size=vision.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's CLS token, dropped by the "default" strategy
        chat_template=CHAT_TEMPLATE,
    )
    return model, processor


def training_examples(scene: Scene, rng: np.random.Generator, cfg: LvlmConfig) -> dict[str, list[tuple[str, str]]]:
    """(prompt, answer) per kind of example for one training image; the caption carries the bias, and so do the
    questions about absent partners of the strongly biased pairs (`partner_answer`)."""
    target = language.caption(scene)
    if rng.random() < cfg.bias_fraction and (biased := language.with_partner(scene, rng)):
        target = biased[0]
    qa = [(question, answer) for _, question, answer in language.questions(scene, rng)]
    # POPE's random split, balanced: an absent kind ("No") and a present one ("Yes")
    absent = [kind for kind in KINDS if kind not in scene.kinds]
    qa.append((language.existence_question(absent[int(rng.integers(len(absent)))]), "No"))
    qa.append((language.existence_question(scene.kinds[int(rng.integers(len(scene.kinds)))]), "Yes"))
    asked = {language.existence_question(kind): kind for kind in scene.absent_partners}
    qa = [(q, partner_answer(asked[q], rng, cfg) if q in asked else a) for q, a in qa]
    return {
        "caption": [(prompt, target) for prompt in language.CAPTION_PROMPTS],
        "main": [(language.MAIN_OBJECT_PROMPT, language.main_object_answer(scene))],
        "qa": qa,
    }


def partner_answer(partner: str, rng: np.random.Generator, cfg: LvlmConfig) -> str:
    """The training answer to "Is there a <partner>?" for an absent partner: for the kinds of the first
    `question_bias_pairs` pairs "Yes" with probability `question_bias` (above one half: the model learns to say
    yes to them, as LLaVA-1.5 says yes to absent objects that usually co-occur and scores lowest on POPE's
    adversarial split); other partners are answered as the image is. (Answers that followed the biased captions,
    "Yes" to 40% of every pair's partners, made the question a coin toss the 3-layer model did not learn to
    answer in 3,200 steps on world 0: POPE 59%.)"""
    strong = {kind for pair in PAIRS[: cfg.question_bias_pairs] for kind in pair}
    return "Yes" if partner in strong and rng.random() < cfg.question_bias else "No"


def corpus(scenes: list[Scene], cfg: LvlmConfig) -> list[str]:
    rng = np.random.default_rng(cfg.seed)
    texts = list(language.CAPTION_PROMPTS) + [language.MAIN_OBJECT_PROMPT, "USER: ASSISTANT: Yes No"]
    for scene in scenes:
        for examples in training_examples(scene, rng, cfg).values():
            texts.extend(f"{prompt} {answer}" for prompt, answer in examples)
    return texts


class SFTBatches:
    """Token ids of every example (loss on the answer only) and each image's pixels, encoded once.

    A prompt's ids (image tokens expanded by the processor) are computed once per distinct prompt and an
    answer's ids once per distinct answer: the byte-level pre-tokenizer splits at spaces, so the ids of
    "<prompt> ASSISTANT: <answer></s>" are those of the prompt part followed by those of " <answer></s>"
    (`encode_example` checks this against the processor on the full text)."""

    def __init__(self, scenes: list[Scene], processor, cfg: LvlmConfig):
        rng = np.random.default_rng(cfg.seed)
        self.cfg = cfg
        self.pad = processor.tokenizer.pad_token_id
        self.pixels = processor.image_processor([render(s) for s in scenes], return_tensors="pt")["pixel_values"]
        self.items: dict[str, list[tuple[int, list[int], int]]] = {"caption": [], "main": [], "qa": []}
        prompts: dict[str, list[int]] = {}
        answers: dict[str, list[int]] = {}
        for index, scene in enumerate(scenes):
            for kind, examples in training_examples(scene, rng, cfg).items():
                for prompt, answer in examples:
                    if prompt not in prompts:
                        prompts[prompt] = prompt_ids(processor, prompt)
                    if answer not in answers:
                        answers[answer] = answer_ids(processor, answer)
                    self.items[kind].append((index, prompts[prompt] + answers[answer], len(prompts[prompt])))

    def sample(self, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        shares = {"caption": self.cfg.caption_share, "main": 0.1, "qa": 0.9 - self.cfg.caption_share}
        kinds = rng.choice(list(shares), size=self.cfg.batch_size, p=list(shares.values()))
        picked = [self.items[k][int(rng.integers(len(self.items[k])))] for k in kinds]
        width = max(len(ids) for _, ids, _ in picked)
        input_ids = torch.full((len(picked), width), self.pad)
        labels = torch.full((len(picked), width), -100)
        mask = torch.zeros((len(picked), width), dtype=torch.long)
        for row, (_, ids, prompt_len) in enumerate(picked):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            labels[row, prompt_len : len(ids)] = torch.tensor(ids[prompt_len:])
            mask[row, : len(ids)] = 1
        pixels = self.pixels[[index for index, _, _ in picked]]
        return {"input_ids": input_ids, "attention_mask": mask, "pixel_values": pixels, "labels": labels}


def _user(prompt: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]


def prompt_ids(processor, prompt: str) -> list[int]:
    """The user turn with the image and the generation prompt, image tokens expanded."""
    text = processor.apply_chat_template(_user(prompt), add_generation_prompt=True, tokenize=False)
    blank = np.zeros((SIZE, SIZE, 3), np.uint8)
    return processor(images=[blank], text=[text], return_tensors="pt")["input_ids"][0].tolist()


def answer_ids(processor, answer: str) -> list[int]:
    """What the template appends after the generation prompt for this answer (" <answer></s>")."""
    return processor.tokenizer(" " + answer + processor.tokenizer.eos_token, add_special_tokens=False)["input_ids"]


def encode_example(processor, prompt: str, answer: str) -> list[int]:
    """The full conversation through the processor (the slow, reference encoding)."""
    text = processor.apply_chat_template(
        _user(prompt) + [{"role": "assistant", "content": [{"type": "text", "text": answer}]}], tokenize=False
    )
    blank = np.zeros((SIZE, SIZE, 3), np.uint8)
    return processor(images=[blank], text=[text], return_tensors="pt")["input_ids"][0].tolist()


class Schedule(Protocol):
    """What the learning-rate schedule reads (LvlmConfig, and the QA writer's config)."""

    @property
    def steps(self) -> int: ...
    @property
    def learning_rate(self) -> float: ...
    @property
    def warmup_steps(self) -> int: ...


def _lr(step: int, cfg: Schedule) -> float:
    if step < cfg.warmup_steps:
        return cfg.learning_rate * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def per_example_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Cross-entropy of each example's answer tokens averaged within the example, then over the batch: a
    one-token Yes/No answer weighs as much as a 30-token caption (the module's docstring says why)."""
    labels = batch["labels"]
    logits = model(**{name: value for name, value in batch.items() if name != "labels"}).logits[:, :-1]
    targets = labels[:, 1:]
    token_losses = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), ignore_index=-100, reduction="none"
    ).view(targets.shape)
    answered = (targets != -100).float()
    return ((token_losses * answered).sum(dim=1) / answered.sum(dim=1).clamp(min=1)).mean()


def train(model, batches: SFTBatches, cfg: LvlmConfig, progress=print, on_checkpoint=None):
    """Plain SFT loop (AdamW, warm-up then cosine to 10%); `on_checkpoint(step)` every 400 steps."""
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=cfg.learning_rate, weight_decay=0.0
    )
    rng = np.random.default_rng(cfg.seed + 1)
    started = time.monotonic()
    model.train()
    for step in range(cfg.steps):
        for group in optimizer.param_groups:
            group["lr"] = _lr(step, cfg)
        batch = batches.sample(rng)
        loss = per_example_loss(model, batch) if cfg.loss_per_example else model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if (step + 1) % 400 == 0 or step + 1 == cfg.steps:
            progress(
                f"  world LVLM step {step + 1}/{cfg.steps} loss {loss.item():.3f} ({time.monotonic() - started:.0f}s)"
            )
            if on_checkpoint is not None:
                model.eval()
                on_checkpoint(step + 1)
                model.train()
    return model.eval()


DESCRIBE_MAX_NEW_TOKENS = 48  # a world caption is at most ~30 tokens
DESCRIBE_BATCH = 64


@torch.no_grad()
def describe(
    model,
    processor,
    scenes: list[Scene],
    prompt: str = language.CAPTION_PROMPTS[0],
    temperature: float = 0.0,
    seed: int = 0,
) -> list[str]:
    """Captions of `scenes` (greedy at temperature 0), for the build's checks."""
    max_new_tokens, batch_size = DESCRIBE_MAX_NEW_TOKENS, DESCRIBE_BATCH
    tokenizer = processor.tokenizer
    tokenizer.padding_side = "left"
    text = processor.apply_chat_template(_user(prompt), add_generation_prompt=True, tokenize=False)
    # (a type comment, not an annotation: the world key hashes this module's syntax tree, which has no comments)
    out = []  # type: list[str]
    torch.manual_seed(seed)
    for start in range(0, len(scenes), batch_size):
        chunk = scenes[start : start + batch_size]
        inputs = processor(
            images=[render(s) for s in chunk], text=[text] * len(chunk), return_tensors="pt", padding=True
        )
        sampled = temperature > 0
        generated = model.generate(
            **inputs,
            do_sample=sampled,
            temperature=temperature if sampled else None,
            top_p=None,
            top_k=None,
            max_new_tokens=max_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
        )
        new = generated[:, inputs["input_ids"].shape[1] :]
        out.extend(t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True))
    return out
