"""The pairs artifact as training data: a checked index, a deterministic order, batches.

`build_index` reads every pairs shard once (texts only, plus the image ids of the images shard
each row points to), finds bad pairs (empty response, missing image, prompt longer than the
context, over-long response when truncation is off) and reports them by row id
(`<shard>:<row>`). Training then sees only good rows. The order is a two-level shuffle (shard
order, then rows within each shard) seeded by (seed, epoch): every rank computes the same order
without talking to the others, consecutive batches read few shards, and a resumed run replays
exactly the batches it would have seen.
"""

from __future__ import annotations

import io
import logging
from collections import OrderedDict, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, TypeVar

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from PIL import Image

from clipdpo.artifacts import Artifact
from clipdpo.errors import UserError
from clipdpo.images import decode_image
from clipdpo.train.encode import Encoded, PairEncoder, image_batch
from clipdpo.train.logps import IGNORE_INDEX

log = logging.getLogger("clipdpo.train")

T = TypeVar("T")

PAIR_COLUMNS = ["image_id", "prompt", "chosen", "rejected", "image_uri"]


class BadPairsError(ValueError, UserError):
    """Bad pairs were found and the config says to refuse them."""


@dataclass
class PairIndex:
    shard_names: list[str]
    shard: np.ndarray  # [n] index into shard_names, good rows only
    row: np.ndarray  # [n] row within that shard
    bad: dict[str, list[str]] = field(default_factory=dict)  # reason -> row ids
    truncated: int = 0  # good rows whose response will be cut to max_length

    def __len__(self) -> int:
        return len(self.shard)

    def row_id(self, position: int) -> str:
        return f"{self.shard_names[self.shard[position]]}:{self.row[position]}"

    def summary(self) -> dict:
        return {
            "pairs_good": len(self),
            "pairs_truncated": self.truncated,
            **{f"pairs_bad_{reason}": len(ids) for reason, ids in self.bad.items()},
        }


ImageSize = tuple[int, int] | None  # (width, height), None where the images shard does not say


def _image_sizes(storage, image_uri: str) -> dict[str, ImageSize]:
    """image_id -> (width, height) of an images shard (its size columns: the images are not decoded)."""
    source = pq.ParquetFile(io.BytesIO(storage.read_bytes(image_uri)))
    columns = [c for c in ("image_id", "width", "height") if c in source.schema_arrow.names]
    table = source.read(columns=columns).to_pydict()
    ids = table["image_id"]
    widths, heights = table.get("width", [None] * len(ids)), table.get("height", [None] * len(ids))
    return {i: (w, h) if w and h else None for i, w, h in zip(ids, widths, heights)}


def classify_rows(
    table, encoder: PairEncoder, known_images: dict[str, dict[str, ImageSize]], truncate: bool
) -> tuple[list, int]:
    """Per row: None (good) or the reason it is bad; and how many good rows need truncation.
    `known_images`: per images shard URI, its images' sizes by image_id."""
    prompts = [p or "" for p in table.column("prompt").to_pylist()]
    chosen = table.column("chosen").to_pylist()
    rejected = table.column("rejected").to_pylist()
    image_ids = table.column("image_id").to_pylist()
    uris = table.column("image_uri").to_pylist()
    sizes = [known_images.get(uri, {}).get(image_id) for uri, image_id in zip(uris, image_ids)]
    prompt_lens = encoder.prompt_lengths(prompts, sizes)
    chosen_lens = encoder.response_lengths(prompts, [c or "" for c in chosen])
    rejected_lens = encoder.response_lengths(prompts, [r or "" for r in rejected])
    reasons, truncated = [], 0
    for i in range(table.num_rows):
        longest = prompt_lens[i] + max(chosen_lens[i], rejected_lens[i])
        if not (chosen[i] or "").strip():
            reason = "empty_chosen"
        elif not (rejected[i] or "").strip():
            reason = "empty_rejected"
        elif chosen[i].strip() == rejected[i].strip():
            reason = "identical_responses"
        elif uris[i] is None or image_ids[i] not in known_images.get(uris[i], {}):
            reason = "missing_image"
        elif prompt_lens[i] >= encoder.max_length:
            reason = "prompt_too_long"
        elif longest > encoder.max_length and not truncate:
            reason = "response_too_long"
        else:
            reason = None
            truncated += longest > encoder.max_length
        reasons.append(reason)
    return reasons, truncated


def build_index(pairs: Artifact, encoder: PairEncoder, *, truncate: bool, on_bad_pair: str) -> PairIndex:
    shard_of, row_of = [], []
    bad: dict[str, list[str]] = {}
    truncated = 0
    for shard_index, (name, table) in enumerate(pairs.iter_shards(columns=PAIR_COLUMNS)):
        known = {}
        for uri in set(table.column("image_uri").drop_null().to_pylist()):
            try:
                known[uri] = _image_sizes(pairs.storage, uri)
            except Exception as err:  # an unreadable images shard makes its rows "missing_image"
                log.warning("%s: images shard %s unreadable (%s)", pairs.uri, uri, err)
        reasons, shard_truncated = classify_rows(table, encoder, known, truncate)
        truncated += shard_truncated
        for row, reason in enumerate(reasons):
            if reason is None:
                shard_of.append(shard_index)
                row_of.append(row)
            else:
                bad.setdefault(reason, []).append(f"{name}:{row}")
    index = PairIndex(pairs.shard_names, np.asarray(shard_of, np.int32), np.asarray(row_of, np.int32), bad, truncated)
    if bad:
        detail = "; ".join(f"{reason}: {len(ids)} (e.g. {', '.join(ids[:5])})" for reason, ids in sorted(bad.items()))
        message = f"{pairs.uri}: bad pairs by row id <shard>:<row>: {detail}"
        if on_bad_pair == "error":
            raise BadPairsError(message + " (on_bad_pair=error; set on_bad_pair=skip to train without them)")
        log.warning("%s (skipped)", message)
    return index


def epoch_order(index: PairIndex, seed: int, epoch: int) -> np.ndarray:
    """Positions into `index` in training order for one epoch (two-level shuffle)."""
    rng = np.random.default_rng([seed, epoch])
    shard_order = rng.permutation(len(index.shard_names))
    by_shard = np.argsort(index.shard, kind="stable")
    starts = np.searchsorted(index.shard[by_shard], np.arange(len(index.shard_names) + 1))
    pieces = [rng.permutation(by_shard[starts[s] : starts[s + 1]]) for s in shard_order]
    return np.concatenate(pieces) if pieces else np.zeros(0, np.int64)


def rank_micro_batches(global_batch: np.ndarray, rank: int, world_size: int, accumulation: int) -> list[np.ndarray]:
    """This rank's micro-batches of one global batch: a contiguous slice, cut into `accumulation` parts."""
    per_rank = len(global_batch) // world_size
    mine = global_batch[rank * per_rank : (rank + 1) * per_rank]
    return np.split(mine, accumulation)


class PairStore:
    """Reads examples by index position and encodes them into model batches; keeps the last few shards
    (pairs + their images) in memory. The training loop and the reference pass both batch through it."""

    cache_shards = 2

    def __init__(
        self,
        pairs: Artifact,
        index: PairIndex,
        encoder: PairEncoder,
        *,
        truncate: bool,
        pad_token_id: int,
        collate_fn: Callable[[list[Encoded], int], dict] | None = None,
    ):
        self.pairs = pairs
        self.index = index
        self.encoder = encoder
        self.truncate = truncate
        self.pad_token_id = pad_token_id
        self.collate = collate_fn or collate  # the model's batch layout (layouts.py); by default concatenated
        self.cache: OrderedDict[int, tuple] = OrderedDict()
        self.image_numbers: dict[tuple[str, str], int] = {}  # (images shard URI, image_id) -> a number per image

    def _shard(self, shard_index: int):
        if shard_index in self.cache:
            self.cache.move_to_end(shard_index)
            return self.cache[shard_index]
        name = self.index.shard_names[shard_index]
        table = self.pairs.read_shard(name, columns=PAIR_COLUMNS)
        images = {}
        for uri in set(table.column("image_uri").drop_null().to_pylist()):
            image_table = pq.read_table(io.BytesIO(self.pairs.storage.read_bytes(uri)), columns=["image_id", "image"])
            wanted = pc.is_in(image_table.column("image_id"), table.column("image_id"))
            image_table = image_table.filter(wanted)
            images[uri] = dict(zip(image_table.column("image_id").to_pylist(), image_table.column("image").to_pylist()))
        entry = (table.to_pydict(), images)
        self.cache[shard_index] = entry
        if len(self.cache) > self.cache_shards:
            self.cache.popitem(last=False)
        return entry

    def example(self, position: int) -> tuple[Image.Image, str, str, str]:
        columns, images = self._shard(int(self.index.shard[position]))
        row = int(self.index.row[position])
        image = decode_image(images[columns["image_uri"][row]][columns["image_id"][row]])
        return image, columns["prompt"][row] or "", columns["chosen"][row], columns["rejected"][row]

    def image_number(self, position: int) -> int:
        """A number for the image of the pair at `position`, the same for every pair showing that image."""
        columns, _ = self._shard(int(self.index.shard[position]))
        row = int(self.index.row[position])
        key = (columns["image_uri"][row], columns["image_id"][row])
        return self.image_numbers.setdefault(key, len(self.image_numbers))

    def batch(self, positions) -> dict[str, torch.Tensor]:
        """The batch (by default concatenated, see `collate`) of the pairs at these index positions, and
        `image_ids` [pairs]: each pair's image number (the key of the image feature cache, imagefeatures.py)."""
        examples = [self.example(int(p)) for p in positions]
        batch = self.collate(self.encoder.encode_batch(examples, self.truncate), self.pad_token_id)
        batch["image_ids"] = torch.tensor([self.image_number(int(p)) for p in positions], dtype=torch.long)
        return batch


def collate(encoded: list[Encoded], pad_token_id: int) -> dict[str, torch.Tensor]:
    """One concatenated batch: rows [0, n) are the chosen sequences, rows [n, 2n) the rejected."""
    sequences, label_rows = [], []
    for side in ("chosen_ids", "rejected_ids"):
        for item in encoded:
            response = getattr(item, side)
            sequences.append(torch.cat([item.prompt_ids, response]))
            label_rows.append(torch.cat([torch.full_like(item.prompt_ids, IGNORE_INDEX), response]))
    length = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), length), pad_token_id, dtype=torch.long)
    labels = torch.full((len(sequences), length), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for i, (seq, lab) in enumerate(zip(sequences, label_rows)):
        input_ids[i, : len(seq)] = seq
        labels[i, : len(lab)] = lab
        attention_mask[i, : len(seq)] = 1
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": labels,
        **image_batch(encoded, copies=2),
    }


def prefetch(items: Iterable[T], prepare: Callable[[T], dict], depth: int = 2) -> Iterator[tuple[T, dict]]:
    """Yield (item, prepare(item)), preparing the next `depth` items on a background thread.

    Image decoding, preprocessing and tokenisation then overlap the model's forward/backward.
    One worker thread, so the PairStore's shard cache is only ever touched by that thread.
    """
    iterator = iter(items)
    pending: deque = deque()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="clipdpo-data") as pool:
        for item in iterator:
            pending.append((item, pool.submit(prepare, item)))
            if len(pending) >= depth:
                break
        while pending:
            item, future = pending.popleft()
            following = next(iterator, None)
            if following is not None:
                pending.append((following, pool.submit(prepare, following)))
            yield item, future.result()
