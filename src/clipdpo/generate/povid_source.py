"""POVID's pairs source (paper Sec. 3.1): ground-truth answers preferred, hallucination-injected copies
dispreferred, written as a `pairs` artifact that the train stage reads like the filter's.

Per images shard (shards keep their names, so the step resumes like the other stages): each image's
ground truth (prompt, answer), one rewrite by the configured rewriter, the rewrite parsed and validated
(generate/povid_inject.py: a reply with no answer, an empty one, the original again, or one that changes
nothing the scorer sees is dropped, its reason counted in the shard's stats), the kept ones as pairs
(`kind` "povid", no scores). Rewriters, by `source`:

- `llm`: an LLM through the generate stage's engines (vLLM on a cluster) with the paper's prompts
  (Appendix A.2); ground truth from an instruction-tuning set in LLaVA's conversation JSON, whose
  `image` paths are the ingested folder's files. The injector sees the image when `with_image`.
- `plugin`: a rewriter of the user's own, named by `rewriter` as `module:callable`; the callable takes
  this config and returns an object with `ground_truth(image_id)`, `replies(items, images)`, `visible`
  and `fingerprint_bytes()` (a rule-based injector; the synthetic world's test bed plugs in this way).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from clipdpo import config as config_lib
from clipdpo.artifacts import Artifact, ArtifactWriter
from clipdpo.engines import Engine, ModelSpec, Sampling
from clipdpo.generate.povid_inject import DROP_REASONS, normalised, validate
from clipdpo.schemas import PAIRS
from clipdpo.stage import ShardSpec, report, run_shards
from clipdpo.storage import Storage

log = logging.getLogger("clipdpo.generate")
SOURCES = ("llm", "plugin")
PAIR_KIND = "povid"


@dataclass(frozen=True)
class PovidSourceConfig:
    source: str = "llm"  # llm (vLLM / transformers through the engines) | plugin (`rewriter`)
    # llm: an instruction-tuning set in LLaVA's conversation JSON (path or s3://); plugin: what the plugin reads
    ground_truth: str = ""
    rewriter: str = ""  # plugin: "module:callable" taking this config, returning the rewriter
    kind: str = "caption"  # llm: the Table 6 prompt (caption: descriptions; reasoning: VQA and reasoning answers)
    # llm: the injector. The paper uses GPT-4V; an open instruction LLM (the QA writer's) sees the question and
    # answer only, a vision-language model with with_image=true sees the image too
    injector: ModelSpec = field(
        default_factory=lambda: ModelSpec(name="openhermes-2.5-mistral-7b", path="teknium/OpenHermes-2.5-Mistral-7B")
    )
    with_image: bool = False
    sampling: Sampling = field(default_factory=lambda: Sampling(temperature=0.7, top_p=0.9, max_new_tokens=512))
    batch_size: int = 8  # hf engine batch
    seed: int = 0  # plugin: for rewriters that draw their errors at random

    RANGES = {"batch_size": config_lib.AT_LEAST_1, "seed": config_lib.SEED}

    def __post_init__(self) -> None:
        config_lib.check_ranges(self)
        if self.source not in SOURCES:
            raise ValueError(f"source={self.source!r}; expected one of {list(SOURCES)}")
        if not self.ground_truth:
            raise ValueError(
                "ground_truth: where the ground-truth answers are (llm: a LLaVA conversation JSON; "
                "plugin: what the rewriter reads)"
            )
        if self.source == "plugin" and not _is_callable_name(self.rewriter):
            raise ValueError(f"rewriter={self.rewriter!r}: source 'plugin' needs rewriter as 'module:callable'")
        if self.kind not in ("caption", "reasoning"):
            raise ValueError(f"kind={self.kind!r}; expected 'caption' or 'reasoning'")


def _is_callable_name(text: str) -> bool:
    module, _, name = text.partition(":")
    return bool(module) and name.isidentifier()


@dataclass(frozen=True)
class Item:
    image_id: str
    prompt: str
    answer: str  # the preferred response
    context: Any = None  # the rewriter's own (world: the scene)


def make_rewriter(cfg: PovidSourceConfig):
    """The rewriter of `cfg.source`: ground_truth(image_id), replies(items, images), visible, fingerprint_bytes()."""
    match cfg.source:
        case "plugin":
            module, name = cfg.rewriter.split(":", 1)
            try:
                factory = getattr(importlib.import_module(module), name)
            except (ImportError, AttributeError) as err:
                raise ValueError(f"rewriter={cfg.rewriter!r}: cannot load it ({err})") from None
            return factory(cfg)
        case "llm":
            return LLMRewriter(cfg)
        case _:
            raise ValueError(f"source={cfg.source!r}; expected one of {list(SOURCES)}")


def llava_image_id(path: str) -> str:
    """The images artifact's id of a LLaVA record's `image` path (ingest's rule: `/` and `%` escaped)."""
    return path.replace("%", "%25").replace("/", "%2F")


def read_llava_json(text: str, where: str) -> dict[str, tuple[str, str]]:
    """image id -> (question, answer) of the first human/gpt turn of each record with an image (the first
    record of an image wins: one pair per image)."""
    try:
        records = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{where}: not valid JSON ({err}); expected LLaVA's conversation list") from None
    if not isinstance(records, list):
        raise ValueError(f"{where}: expected a JSON list of LLaVA records (id, image, conversations)")
    out: dict[str, tuple[str, str]] = {}
    for number, record in enumerate(records):
        turns = record.get("conversations") if isinstance(record, dict) else None
        if not record.get("image") or not isinstance(turns, list):
            continue
        human = next((k for k, t in enumerate(turns) if t.get("from") == "human"), None)
        if human is None or human + 1 >= len(turns) or turns[human + 1].get("from") != "gpt":
            raise ValueError(
                f"{where}: record {number} (id {record.get('id')!r}): expected a human turn followed "
                "by a gpt turn in `conversations`"
            )
        question = turns[human]["value"].replace("<image>", "").strip()
        out.setdefault(llava_image_id(record["image"]), (question, turns[human + 1]["value"].strip()))
    return out


_STOP = frozenset("a an the of in on at to and or is are there this that with it its".split())


def content_words(text: str) -> frozenset:
    """What a scorer can see in free text: its words less a few function words (a rewrite that only
    reorders, re-punctuates or swaps articles changes nothing here)."""
    return frozenset(normalised(text).split()) - _STOP


class LLMRewriter:
    """Ground truth from a LLaVA conversation JSON; replies from an LLM with the paper's prompts."""

    visible = staticmethod(content_words)

    def __init__(self, cfg: PovidSourceConfig, storage: Storage | None = None):
        self.cfg = cfg
        self.raw = (storage or Storage()).read_bytes(cfg.ground_truth)
        self.truth = read_llava_json(self.raw.decode(), cfg.ground_truth)
        self.engine: Engine | None = None  # loaded on first use: a finished or resumed run loads none

    def fingerprint_bytes(self) -> bytes:
        return self.raw

    def ground_truth(self, image_id: str) -> tuple[str, str, None] | None:
        found = self.truth.get(image_id)
        return (found[0], found[1], None) if found else None

    def replies(self, items: list[Item], images: dict[str, bytes]) -> list[tuple[str, str]]:
        from clipdpo.engines import load_engine
        from clipdpo.generate.povid_rewrite import GroundTruth, replies
        from clipdpo.images import decode_image

        engine = self.engine or load_engine(
            self.cfg.injector, vision=self.cfg.with_image, batch_size=self.cfg.batch_size
        )
        self.engine = engine
        truths = [
            GroundTruth(
                item.prompt,
                item.answer,
                self.cfg.kind,
                decode_image(images[item.image_id]) if self.cfg.with_image else None,
            )
            for item in items
        ]
        return [(self.cfg.kind, reply) for reply in replies(engine, truths, self.cfg.sampling)]


def pairs_shard(rewriter, image_ids: list[str], images: dict[str, bytes], image_uri: str) -> tuple[pa.Table, dict]:
    """One images shard's POVID pairs and its counters (kept, dropped by reason, per injection kind)."""
    items: list[Item] = []
    stats: Counter[str] = Counter()
    for image_id in image_ids:
        truth = rewriter.ground_truth(image_id)
        if truth is None:
            stats["images_without_ground_truth"] += 1
            continue
        items.append(Item(image_id, *truth))
    rows: dict[str, list] = {name: [] for name in PAIRS.names}
    for item, (kind, reply) in zip(items, rewriter.replies(items, images) if items else []):
        injected, reason = validate(reply, item.answer, rewriter.visible)
        stats[f"{'kept' if injected else 'dropped'}_{kind if injected else reason}"] += 1
        if injected is None:
            continue
        for name, value in (
            ("image_id", item.image_id),
            ("kind", PAIR_KIND),
            ("prompt", item.prompt),
            ("chosen", item.answer),
            ("rejected", injected),
            ("chosen_score", None),
            ("rejected_score", None),
            ("margin", None),
            ("image_uri", image_uri),
        ):
            rows[name].append(value)
    stats["povid_pairs"] = len(rows["image_id"])
    counts = {f"dropped_{reason}": 0 for reason in DROP_REASONS} | dict(stats)  # every drop reason, 0 or not
    return pa.Table.from_pydict(rows, schema=PAIRS), counts


def run(
    cfg: PovidSourceConfig,
    input: str,
    output: str,
    *,
    shard: ShardSpec = ShardSpec(),
    finalize: bool = False,
    overwrite: bool = False,
    storage: Storage | None = None,
) -> dict:
    """POVID pairs for every images shard of `input` (this worker's share) into `output`; counts as stats."""
    storage = storage or Storage()
    images = Artifact.open(storage, input, kind="images")
    rewriter = make_rewriter(cfg)
    truth = hashlib.sha256(rewriter.fingerprint_bytes()).hexdigest()  # a changed ground truth is a new input
    writer = ArtifactWriter(
        storage, output, "pairs", config_lib.to_dict(cfg), [images], overwrite=overwrite, input_fingerprints=[truth]
    )

    def process(name: str) -> tuple[pa.Table, dict]:
        table = images.read_shard(name, columns=["image_id", "image"])
        ids = table.column("image_id").to_pylist()
        return pairs_shard(rewriter, ids, dict(zip(ids, table.column("image").to_pylist())), images.shard_uri(name))

    result = run_shards(writer, images.shard_names, process, shard, finalize_only=finalize)
    if result.manifest is not None:
        stats = result.manifest.stats
        print(
            f"povid source ({cfg.source}): {result.manifest.rows} pairs; counts "
            f"{json.dumps({k: stats[k] for k in sorted(stats) if k != 'seconds'})}",
            file=sys.stderr,
        )
    return report("povid", result, {"output": writer.uri})


__all__ = ["PovidSourceConfig", "Item", "make_rewriter", "pairs_shard", "read_llava_json", "run"]
