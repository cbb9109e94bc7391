"""Turn (image, prompt, response) into token ids the way the model's chat template lays them out.

The prompt is rendered with the processor's chat template (user turn with the image, then the
generation prompt) and tokenized by the processor, which expands the image placeholder into the
model's image tokens. The response text is whatever the template adds after the generation
prompt for an assistant turn (so end-of-turn tokens are the template's own). Truncation only
ever shortens the response: image tokens are never dropped or split, so image features and
image tokens always match.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image


def _user_turn(prompt: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]


@dataclass
class Encoded:
    prompt_ids: torch.Tensor  # [prompt_len], image tokens included
    # [1, 3, H, W] for a fixed-size image (LLaVA); [patches, features] for a dynamic-resolution one (Qwen VL)
    pixel_values: torch.Tensor
    chosen_ids: torch.Tensor  # [response_len]
    rejected_ids: torch.Tensor
    truncated: bool
    # [1, 3]: a dynamic-resolution image's (temporal, height, width) patch grid, as the processor's
    # `image_grid_thw` gives it; None for a fixed-size image
    image_grid: torch.Tensor | None = None


def split_images(batch) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """(pixel_values, image_grid) per image of a processor output: one row each of a fixed-size batch
    [n, 3, H, W], or each image's patches of a dynamic-resolution batch's [sum of patches, features]."""
    grids = batch.get("image_grid_thw")
    if grids is None:
        return [(row[None], None) for row in batch["pixel_values"]]
    pieces = torch.split(batch["pixel_values"], grids.prod(-1).tolist())
    return [(piece, grids[k : k + 1]) for k, piece in enumerate(pieces)]


def image_batch(encoded: list[Encoded], copies: int) -> dict[str, torch.Tensor]:
    """The pairs' images for a forward whose rows show them `copies` times over, in order: `pixel_values`, and
    for dynamic-resolution images `image_grid_thw` (one row per image; their patches are concatenated)."""
    images = {"pixel_values": torch.cat([item.pixel_values for item in encoded] * copies)}
    grids = [item.image_grid for item in encoded if item.image_grid is not None]
    if grids:
        images["image_grid_thw"] = torch.cat(grids * copies)
    return images


CALIBRATION_SIZE, OTHER_SIZE = (64, 64), (128, 96)  # (width, height) of the blank images that measure a processor


class PairEncoder:
    def __init__(self, processor, max_length: int):
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.max_length = max_length
        self.image_token_id = getattr(processor, "image_token_id", None) or self.tokenizer.convert_tokens_to_ids(
            getattr(processor, "image_token", "<image>")
        )
        self._templates: dict[str, tuple] = {}
        self._offsets: dict[tuple[int, int], tuple[int, int]] = {}
        self.image_tokens, self._prompt_offset = self._calibrate(CALIBRATION_SIZE)
        # dynamic resolution (Qwen VL): an image's token count follows its size, so prompt lengths need it
        self.dynamic_resolution = self._calibrate(OTHER_SIZE)[0] != self.image_tokens

    def prompt_text(self, prompt: str) -> str:
        return self._template(prompt)[0]

    def response_text(self, prompt: str, response: str) -> str:
        """The text the template appends after the generation prompt for this assistant turn."""
        _, before, after = self._template(prompt)
        if before is None or after is None:  # (None together) a template that rewrites earlier turns: in full
            messages = _user_turn(prompt) + [{"role": "assistant", "content": [{"type": "text", "text": response}]}]
            full = self.processor.apply_chat_template(messages, tokenize=False)
            prefix = self.prompt_text(prompt)
            return full[len(prefix) :] if full.startswith(prefix) else " " + response + (self.tokenizer.eos_token or "")
        return before + response + after

    def _template(self, prompt: str) -> tuple[str, str | None, str | None]:
        """(rendered prompt, text before / after the response), rendered once per distinct prompt.

        The paper's prompts are a handful of strings, so rendering the Jinja template per example
        would be wasted work; the response's wrapping is found by rendering a sentinel response.
        """
        cached = self._templates.get(prompt)
        if cached is None:
            rendered = self.processor.apply_chat_template(
                _user_turn(prompt), add_generation_prompt=True, tokenize=False
            )
            sentinel = "\u2063CLIPDPO\u2063"
            messages = _user_turn(prompt) + [{"role": "assistant", "content": [{"type": "text", "text": sentinel}]}]
            full = self.processor.apply_chat_template(messages, tokenize=False)
            before = after = None
            if full.startswith(rendered) and full.count(sentinel) == 1:
                before, after = full[len(rendered) :].split(sentinel)
            cached = (rendered, before, after)
            if len(self._templates) < 10_000:
                self._templates[prompt] = cached
        return cached

    def _calibrate(self, size: tuple[int, int]) -> tuple[int, int]:
        """Image tokens of a (width, height) image, and how many tokens the processor adds to a tokenized prompt
        text with it (image placeholder expansion, BOS): prompt lengths then need no image processing. Kept per
        size: a dataset's images come in a limited number of sizes."""
        if size not in self._offsets:
            text = self.prompt_text("x")
            ids = self.processor(images=[Image.new("RGB", size)], text=[text], return_tensors="pt")["input_ids"][0]
            count = int((ids == self.image_token_id).sum())
            if count == 0:
                raise ValueError("the processor's output has no image tokens; is this a LLaVA-style processor?")
            plain = len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
            self._offsets[size] = (count, len(ids) - plain)
        return self._offsets[size]

    def prompt_lengths(self, prompts: list[str], image_sizes: list[tuple[int, int] | None] | None = None) -> list[int]:
        """Token counts of rendered prompts as the processor makes them (image tokens included). A dynamic-resolution
        processor's count depends on the image: `image_sizes` gives each prompt's (width, height), where known."""
        texts = [self.prompt_text(p) for p in prompts]
        sizes = image_sizes if self.dynamic_resolution and image_sizes is not None else [None] * len(texts)
        rows = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        return [
            len(row) + (self._prompt_offset if size is None else self._calibrate(size)[1])
            for row, size in zip(rows, sizes)
        ]

    def response_lengths(self, prompts: list[str], responses: list[str]) -> list[int]:
        texts = [self.response_text(p, r) for p, r in zip(prompts, responses)]
        return [len(row) for row in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]

    def encode(self, image: Image.Image, prompt: str, chosen: str, rejected: str, truncate: bool) -> Encoded:
        return self.encode_batch([(image, prompt, chosen, rejected)], truncate)[0]

    def encode_batch(self, examples: list[tuple[Image.Image, str, str, str]], truncate: bool) -> list[Encoded]:
        """One processor call for the images and prompts, one tokenizer call for all responses."""
        batch = self.processor(
            images=[e[0] for e in examples],
            text=[self.prompt_text(e[1]) for e in examples],
            padding=True,
            return_tensors="pt",
        )
        response_ids = self.tokenizer(
            [self.response_text(e[1], text) for e in examples for text in e[2:4]], add_special_tokens=False
        )["input_ids"]
        out = []
        for k, (pixel_values, grid) in enumerate(split_images(batch)):
            prompt_ids = batch["input_ids"][k][batch["attention_mask"][k].bool()]  # padding side agnostic
            room = self.max_length - len(prompt_ids)
            if room < 1:
                raise ValueError(
                    f"prompt is {len(prompt_ids)} tokens (image included), max_length is {self.max_length}"
                )
            responses, truncated = [], False
            for ids in response_ids[2 * k : 2 * k + 2]:
                if len(ids) > room:
                    if not truncate:
                        raise ValueError(
                            f"prompt + response is {len(prompt_ids) + len(ids)} tokens, max_length is {self.max_length}"
                        )
                    ids, truncated = ids[:room], True
                responses.append(torch.tensor(ids, dtype=torch.long))
            out.append(Encoded(prompt_ids, pixel_values, responses[0], responses[1], truncated, grid))
        return out
