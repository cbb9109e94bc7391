"""Generate candidates for one images shard: captions from each model, then QA from the LLM."""

from __future__ import annotations

import logging
from typing import Any, Callable, TypeVar

import pyarrow as pa
from PIL import Image

from clipdpo.generate.config import GenerateConfig, QAConfig
from clipdpo.engines import Engine, ImageRequest
from clipdpo.generate.qa_parse import parse_qa
from clipdpo.schemas import CANDIDATES
from clipdpo.images import decode_all
from clipdpo.progress import Progress
from clipdpo.seeds import stable_seed

log = logging.getLogger("clipdpo.generate")
T = TypeVar("T")


def samples_per_prompt(captions: int, prompts: int) -> list[int]:
    """Captions spread round-robin over the prompts: 5 over 5 is one each, 7 over 5 is 2,2,1,1,1."""
    return [captions // prompts + (1 if k < captions % prompts else 0) for k in range(prompts)]


def _row(**values: Any) -> dict[str, Any]:
    row = {name: None for name in CANDIDATES.names}
    row.update(values)
    return row


def with_progress(engine: Engine, what: str, total: int, call: Callable[[Engine], T]) -> T:
    """`call(engine)` with a progress line every so often (the hf engine counts its batches; vLLM, which
    takes the whole list at once, reports when it is done)."""
    progress = Progress(what, total, unit="requests")
    counts = hasattr(engine, "progress")  # engines that count their batches (HFEngine)
    if counts:
        engine.progress = progress
    try:
        result = call(engine)
    finally:
        if counts:
            engine.progress = None
    progress.finish()
    return result


def caption_rows(images: list[tuple[str, Image.Image]], cfg: GenerateConfig, captioners: dict[str, Engine],
                 stats: dict[str, Any]) -> list[dict[str, Any]]:
    """Caption rows from every model for every image; empty captions are counted and dropped."""
    rows: list[dict[str, Any]] = []
    counts = samples_per_prompt(cfg.captions_per_model, len(cfg.prompts))
    sampling = cfg.sampling
    for spec in cfg.captioners:
        # All prompts of one image are consecutive, so vLLM's prefix cache reuses its image tokens.
        requests, keys = [], []
        for image_id, image in images:
            for k, (prompt, n) in enumerate(zip(cfg.prompts, counts)):
                if n == 0:
                    continue
                seed = stable_seed(sampling.seed, image_id, spec.name, k)
                requests.append(ImageRequest(image=image, prompt=prompt, n=n, seed=seed))
                keys.append((image_id, k, prompt, seed))
        outputs = with_progress(captioners[spec.name], f"generate captions ({spec.name})", len(requests),
                                lambda engine: engine.caption(requests, sampling)) if requests else []
        for (image_id, k, prompt, seed), texts in zip(keys, outputs):
            for i, text in enumerate(texts):
                candidate_id = f"{image_id}/{spec.name}/p{k}/{i}"
                if not text.strip():
                    stats["captions_empty"] += 1
                    stats["empty_caption_ids"].append(candidate_id)
                    continue
                rows.append(_row(image_id=image_id, candidate_id=candidate_id, kind="caption", model=spec.name,
                                 prompt_id=k, prompt=prompt, text=text, temperature=sampling.temperature,
                                 top_p=sampling.top_p, max_new_tokens=sampling.max_new_tokens, seed=seed))
                stats["captions"] += 1
    if stats["captions_empty"]:
        log.warning("%d empty caption(s) dropped, e.g. %s", stats["captions_empty"], stats["empty_caption_ids"][:3])
    return rows


def qa_rows(captions_of: dict[str, list[str]], qa: QAConfig, engine: Engine,
            stats: dict[str, Any]) -> list[dict[str, Any]]:
    """Question / right answer / wrong answer rows the LLM writes from each image's captions."""
    asked = [(image_id, texts) for image_id, texts in captions_of.items() if texts]
    prompts = [
        qa.prompt_template.format(captions="\n".join(f"{i + 1}. {t}" for i, t in enumerate(texts)),
                                  n=qa.questions_per_image)
        for _, texts in asked
    ]
    replies = with_progress(engine, f"generate QA ({qa.model.name})", len(prompts),
                            lambda chat: chat.chat(prompts, qa.sampling)) if prompts else []
    rows: list[dict[str, Any]] = []
    for (image_id, _), reply in zip(asked, replies):
        parsed = parse_qa(reply, qa.questions_per_image)
        stats["qa_unparseable"] += parsed.unparseable
        if not parsed.items:
            stats["qa_replies_empty"] += 1
        for j, item in enumerate(parsed.items):
            rows.append(_row(image_id=image_id, candidate_id=f"{image_id}/{qa.model.name}/q{j}", kind="qa",
                             model=qa.model.name, prompt_id=j, prompt=item.question, question=item.question,
                             answer_pos=item.correct, answer_neg=item.wrong,
                             temperature=qa.sampling.temperature, top_p=qa.sampling.top_p,
                             max_new_tokens=qa.sampling.max_new_tokens, seed=qa.sampling.seed))
            stats["qa_rows"] += 1
    return rows


def generate_shard(images: pa.Table, cfg: GenerateConfig, captioners: dict[str, Engine],
                   qa_engine: Engine | None) -> tuple[pa.Table, dict[str, Any]]:
    decoded = decode_all(zip(images.column("image_id").to_pylist(), images.column("image").to_pylist()))
    stats: dict[str, Any] = {"images": len(decoded.images), "images_failed": len(decoded.failed), "captions": 0,
                             "captions_empty": 0, "qa_rows": 0, "qa_unparseable": 0, "qa_replies_empty": 0,
                             "failed_image_ids": list(decoded.failed)[:20], "empty_caption_ids": []}
    rows = caption_rows(decoded.images, cfg, captioners, stats)
    if cfg.qa.enabled and qa_engine is not None:
        captions_of: dict[str, list[str]] = {image_id: [] for image_id, _ in decoded.images}
        for row in rows:
            captions_of[row["image_id"]].append(row["text"])
        rows += qa_rows(captions_of, cfg.qa, qa_engine, stats)
    stats["empty_caption_ids"] = stats["empty_caption_ids"][:20]
    return pa.Table.from_pylist(rows, schema=CANDIDATES), stats
