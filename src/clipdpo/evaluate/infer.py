"""Model inference for the evaluations, through the generate stage's engines, saved in resumable chunks.

Responses of one (model, task) go to `<output>/responses/<model>/<task>-<key>/part-NNNNN.jsonl`, one
file per `chunk_size` items, each written atomically. The key hashes everything that decides the
replies (model spec, the model's content, prompts, mode, decoding), so a rerun with the same settings
reuses finished chunks and a changed setting starts afresh; so does a model retrained at the same path
(as a pipeline rerun after a config change does). Decoding is greedy, as the benchmarks' own scripts, unless
a task says otherwise (AMBER's `decoding`): then each row also holds `samples`, every answer drawn for the
item ("response" is the first), and the key hashes the decoding, so a changed decoding never reuses rows.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from typing import Callable

from clipdpo.engines import Engine, ImageRequest, ModelSpec, Sampling
from clipdpo.evaluate.config import DecodingConfig
from clipdpo.evaluate.data import Item, load_image
from clipdpo.progress import Progress
from clipdpo.seeds import stable_seed
from clipdpo.storage import NotFound, Storage, join

log = logging.getLogger("clipdpo.evaluate")

YES_NO = ["Yes", "No"]


@dataclass(frozen=True)
class Task:
    """What to ask of every item: free text (`max_new_tokens`, `decoding`) or a choice among `options` by logits."""

    name: str
    items: list[Item]
    max_new_tokens: int = 512
    options: tuple[str, ...] = ()
    decoding: DecodingConfig = DecodingConfig()


SEEDING = "item-id-hash"  # how sampled items are seeded (item_seed); in the responses' key


def item_seed(decoding_seed: int, item_id: str) -> int:
    """An item's request seed: a function of the decoding seed and the item's id alone."""
    return stable_seed(decoding_seed, "item", item_id)


def task_key(spec: ModelSpec, task: Task, revision: str = "") -> str:
    """`revision`: a hash of the model's content (Storage.content_digest)."""
    decided_by = {
        "model": asdict(spec),
        "options": list(task.options),
        "max_new_tokens": task.max_new_tokens,
        "items": [[item.id, item.image, item.prompt] for item in task.items],
    }
    if not task.decoding.greedy:  # greedy keys stay as they were: responses saved before decoding existed still count
        decided_by["decoding"] = asdict(task.decoding)
        decided_by["seeding"] = SEEDING  # samples drawn under the old seeding are not reused
    if revision:
        decided_by["revision"] = revision
    return hashlib.sha256(json.dumps(decided_by, sort_keys=True).encode()).hexdigest()[:12]


class Responder:
    """Answers tasks with one model; the engine is loaded on first need (a fully cached rerun loads none)."""

    def __init__(
        self,
        spec: ModelSpec,
        output: str,
        storage: Storage,
        engine_factory: Callable[[], Engine],
        chunk_size: int = 256,
    ):
        self.spec, self.output, self.storage = spec, output, storage
        self._factory = engine_factory
        self._engine: Engine | None = None
        self.chunk_size = chunk_size
        self.inferred = 0  # items answered by the model in this process (not read back from chunks)
        self._revision: str | None = None

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = self._factory()
        return self._engine

    @property
    def revision(self) -> str:
        """The model's content hash, read once (S3 ETags or file digests; a hub id by its name)."""
        if self._revision is None:
            self._revision = self.storage.content_digest(self.spec.path)
        return self._revision

    def folder(self, task: Task) -> str:
        return join(self.output, "responses", self.spec.name, f"{task.name}-{task_key(self.spec, task, self.revision)}")

    def answer(self, task: Task) -> dict[str, str | list[str]]:
        """item id -> response, for every item of the task; every sample (a list) when its decoding samples."""
        folder = self.folder(task)
        responses: dict[str, str | list[str]] = {}
        progress = Progress(f"evaluate {self.spec.name} / {task.name}", len(task.items), unit="items")
        for index, start in enumerate(range(0, len(task.items), self.chunk_size)):
            chunk = task.items[start : start + self.chunk_size]
            uri = join(folder, f"part-{index:05d}.jsonl")
            try:
                rows = [json.loads(line) for line in self.storage.read_bytes(uri).decode().splitlines()]
                progress.start_done += len(rows)  # read back, not answered: not in the rate
            except NotFound:
                rows = self._infer(task, chunk)
                self.storage.write_bytes(uri, "".join(json.dumps(row) + "\n" for row in rows).encode())
            responses.update((row["id"], row["samples"] if "samples" in row else row["response"]) for row in rows)
            progress.advance(len(rows))
        log.info("%s / %s: %d responses (%s)", self.spec.name, task.name, len(responses), folder)
        return responses

    def _infer(self, task: Task, chunk: list[Item]) -> list[dict]:
        d = task.decoding
        # each item's seed is a hash of the decoding seed and the item's id (its samples' seeds hash that again,
        # clipdpo.seeds): a chunk redone after a restart draws what it drew the first time, and no two items
        # or samples share a random stream (seed + place would: item i's sample 1 is item i+1's sample 0)
        requests = [
            ImageRequest(
                image=load_image(self.storage, item.image, f"{task.name} item {item.id}"),
                prompt=item.prompt,
                n=d.samples,
                seed=item_seed(d.seed, item.id),
            )
            for item in chunk
        ]
        self.inferred += len(chunk)
        if task.options:
            replies = self.engine.choose(requests, list(task.options))
            return [{"id": item.id, "response": reply} for item, reply in zip(chunk, replies)]
        sampling = Sampling(temperature=d.temperature, top_p=d.top_p, max_new_tokens=task.max_new_tokens, seed=d.seed)
        answers = self.engine.caption(requests, sampling)
        if d.greedy:
            return [{"id": item.id, "response": texts[0]} for item, texts in zip(chunk, answers)]
        return [{"id": item.id, "response": texts[0], "samples": texts} for item, texts in zip(chunk, answers)]
