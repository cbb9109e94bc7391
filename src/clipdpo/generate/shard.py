"""Generate candidates for one images shard: captions from each model, then QA from the LLM."""

from __future__ import annotations

import itertools
import logging
import math
from functools import partial
from typing import Any, Callable, Iterable, Iterator, Protocol, TypeVar, runtime_checkable

import pyarrow as pa
from PIL import Image

from clipdpo.engines import Engine, ImageRequest, Sampling
from clipdpo.generate.config import GenerateConfig, QAConfig
from clipdpo.generate.qa_parse import parse_qa
from clipdpo.images import Decoding
from clipdpo.progress import Progress
from clipdpo.schemas import CANDIDATES
from clipdpo.seeds import stable_seed

log = logging.getLogger("clipdpo.generate")
T = TypeVar("T")


@runtime_checkable
class CountsBatches(Protocol):
    """An engine that advances a progress line by each batch it runs (HFEngine); vLLM's takes all at once."""

    progress: Progress | None


# Images decoded and sent to the caption engines at a time: memory holds this many decoded images, not a shard's
# (1,000 photos of 12 MP would be 36 GB); a vLLM call still gets hundreds of requests to schedule.
IMAGES_PER_CALL = 64


def samples_per_prompt(captions: int, prompts: int) -> list[int]:
    """Captions spread round-robin over the prompts: 5 over 5 is one each, 7 over 5 is 2,2,1,1,1."""
    return [captions // prompts + (1 if k < captions % prompts else 0) for k in range(prompts)]


def _row(**values: Any) -> dict[str, Any]:
    row = {name: None for name in CANDIDATES.names}
    row.update(values)
    return row


def _caption(engine: Engine, requests: list[ImageRequest], sampling: Sampling) -> list[list[str]]:
    return engine.caption(requests, sampling)


def with_progress(
    engine: Engine, what: str, total: int, call: Callable[[Engine], T], progress: Progress | None = None
) -> T:
    """`call(engine)` with a progress line every so often (the hf engine counts its batches; vLLM, which
    takes the whole list at once, reports when it is done). `progress`: one shared by several calls (each
    adds its `total`), finished by its owner; by default one for this call alone."""
    own = progress is None
    progress = progress or Progress(what, total, unit="requests")
    counter = engine if isinstance(engine, CountsBatches) else None  # engines that count their batches
    if counter is not None:
        counter.progress = progress
    try:
        result = call(engine)
    finally:
        if counter is not None:
            counter.progress = None
    if own:
        progress.finish()
    elif counter is None:
        progress.advance(total)
    return result


def images_per_call(batch_size: int) -> int:
    """IMAGES_PER_CALL rounded up to a multiple of `batch_size`: the hf engine's batches, each seeded by its
    first request, are then the ones one call with the whole shard would make (each image has as many requests)."""
    return math.ceil(IMAGES_PER_CALL / batch_size) * batch_size


def batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Lists of `size` items (the last one shorter); a list is not kept once the next is asked for."""
    iterator = iter(items)
    while True:
        chunk = list(itertools.islice(iterator, size))
        if not chunk:
            return
        yield chunk
        del chunk


def caption_rows(
    images: list[tuple[str, Image.Image]],
    cfg: GenerateConfig,
    captioners: dict[str, Engine],
    stats: dict[str, Any],
    progress: dict[str, Progress] | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """Caption rows of every image, per model (name -> rows, image by image); empty captions are counted and
    dropped. `progress`: each model's progress over several calls (see `with_progress`)."""
    rows: dict[str, list[dict[str, Any]]] = {}
    counts = samples_per_prompt(cfg.captions_per_model, len(cfg.prompts))
    sampling = cfg.sampling
    for spec in cfg.captioners:
        rows[spec.name] = []
        # All prompts of one image are consecutive, so vLLM's prefix cache reuses its image tokens.
        requests, keys = [], []
        for image_id, image in images:
            for k, (prompt, n) in enumerate(zip(cfg.prompts, counts)):
                if n == 0:
                    continue
                seed = stable_seed(sampling.seed, image_id, spec.name, k)
                requests.append(ImageRequest(image=image, prompt=prompt, n=n, seed=seed))
                keys.append((image_id, k, prompt, seed))
        outputs = (
            with_progress(
                captioners[spec.name],
                f"generate captions ({spec.name})",
                len(requests),
                partial(_caption, requests=requests, sampling=sampling),
                progress[spec.name] if progress else None,
            )
            if requests
            else []
        )
        for (image_id, k, prompt, seed), texts in zip(keys, outputs):
            for i, text in enumerate(texts):
                candidate_id = f"{image_id}/{spec.name}/p{k}/{i}"
                if not text.strip():
                    stats["captions_empty"] += 1
                    stats["empty_caption_ids"].append(candidate_id)
                    continue
                rows[spec.name].append(
                    _row(
                        image_id=image_id,
                        candidate_id=candidate_id,
                        kind="caption",
                        model=spec.name,
                        prompt_id=k,
                        prompt=prompt,
                        text=text,
                        temperature=sampling.temperature,
                        top_p=sampling.top_p,
                        max_new_tokens=sampling.max_new_tokens,
                        seed=seed,
                    )
                )
                stats["captions"] += 1
    return rows


def qa_rows(
    captions_of: dict[str, list[str]], qa: QAConfig, engine: Engine, stats: dict[str, Any]
) -> list[dict[str, Any]]:
    """Question / right answer / wrong answer rows the LLM writes from each image's captions."""
    asked = [(image_id, texts) for image_id, texts in captions_of.items() if texts]
    prompts = [
        qa.prompt_template.format(
            captions="\n".join(f"{i + 1}. {t}" for i, t in enumerate(texts)), n=qa.questions_per_image
        )
        for _, texts in asked
    ]
    replies = (
        with_progress(
            engine, f"generate QA ({qa.model.name})", len(prompts), lambda chat: chat.chat(prompts, qa.sampling)
        )
        if prompts
        else []
    )
    rows: list[dict[str, Any]] = []
    for (image_id, _), reply in zip(asked, replies):
        parsed = parse_qa(reply, qa.questions_per_image)
        stats["qa_unparseable"] += parsed.unparseable
        if not parsed.items:
            stats["qa_replies_empty"] += 1
        for j, item in enumerate(parsed.items):
            rows.append(
                _row(
                    image_id=image_id,
                    candidate_id=f"{image_id}/{qa.model.name}/q{j}",
                    kind="qa",
                    model=qa.model.name,
                    prompt_id=j,
                    prompt=item.question,
                    question=item.question,
                    answer_pos=item.correct,
                    answer_neg=item.wrong,
                    temperature=qa.sampling.temperature,
                    top_p=qa.sampling.top_p,
                    max_new_tokens=qa.sampling.max_new_tokens,
                    seed=qa.sampling.seed,
                )
            )
            stats["qa_rows"] += 1
    return rows


def generate_shard(
    images: pa.Table, cfg: GenerateConfig, captioners: dict[str, Engine], qa_engine: Engine | None
) -> tuple[pa.Table, dict[str, Any]]:
    """Candidates of one images shard. Images are decoded `images_per_call` at a time and dropped once
    captioned; the rows are those (and in the order) of one call per model with every image."""
    image_ids = images.column("image_id").to_pylist()
    encoded = images.column("image")
    decoding = Decoding()
    stats: dict[str, Any] = {
        "images": 0,
        "images_failed": 0,
        "captions": 0,
        "captions_empty": 0,
        "qa_rows": 0,
        "qa_unparseable": 0,
        "qa_replies_empty": 0,
        "failed_image_ids": [],
        "empty_caption_ids": [],
    }
    requests_per_image = sum(1 for n in samples_per_prompt(cfg.captions_per_model, len(cfg.prompts)) if n)
    progress = {
        spec.name: Progress(f"generate captions ({spec.name})", len(image_ids) * requests_per_image, unit="requests")
        for spec in cfg.captioners
    }
    by_model: dict[str, list[dict[str, Any]]] = {spec.name: [] for spec in cfg.captioners}
    decoded_ids: list[str] = []
    each = decoding.each((image_id, encoded[i].as_py()) for i, image_id in enumerate(image_ids))
    for chunk in batched(each, images_per_call(cfg.batch_size)):
        decoded_ids += [image_id for image_id, _ in chunk]
        for name, rows in caption_rows(chunk, cfg, captioners, stats, progress).items():
            by_model[name] += rows
        del chunk  # not alive while the next chunk decodes
    for line in progress.values():
        line.finish()
    if stats["captions_empty"]:
        log.warning("%d empty caption(s) dropped, e.g. %s", stats["captions_empty"], stats["empty_caption_ids"][:3])
    stats.update(
        images=decoding.decoded, images_failed=len(decoding.failed), failed_image_ids=list(decoding.failed)[:20]
    )
    rows = [row for spec in cfg.captioners for row in by_model[spec.name]]
    if cfg.qa.enabled and qa_engine is not None:
        captions_of: dict[str, list[str]] = {image_id: [] for image_id in decoded_ids}
        for row in rows:
            captions_of[row["image_id"]].append(row["text"])
        rows += qa_rows(captions_of, cfg.qa, qa_engine, stats)
    stats["empty_caption_ids"] = stats["empty_caption_ids"][:20]
    return pa.Table.from_pylist(rows, schema=CANDIDATES), stats
