"""generate: captions from a pool of LVLMs and LLM-written questions with right and wrong answers.

`run(cfg, images_uri, output, ...)` writes one candidates shard per images shard.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from clipdpo import config as config_lib
from clipdpo.artifacts import Artifact, ArtifactWriter
from clipdpo.generate.config import GenerateConfig
from clipdpo.stage import ShardSpec, report, run_shards
from clipdpo.storage import Storage, local_model_dir

if TYPE_CHECKING:
    from clipdpo.engines import Engine

# Where a captioner on S3 (a later round's: the model the round before trained) is copied to be loaded, once per
# content (clipdpo.storage.local_model_dir)
MODEL_CACHE = os.path.join(tempfile.gettempdir(), "clipdpo-generate-models")


class _Engines:
    """The caption engines and the QA engine, loaded on first use: a finished or resumed run loads none."""

    def __init__(self, cfg: GenerateConfig, storage: Storage):
        self.cfg = cfg
        self.storage = storage
        self.captioners: dict[str, Engine] = {}
        self.qa: Engine | None = None

    def load(self) -> "_Engines":
        from clipdpo.engines import load_engine

        if not self.captioners:
            for spec in self.cfg.captioners:
                local = replace(spec, path=local_model_dir(self.storage, spec.path, MODEL_CACHE))
                self.captioners[spec.name] = load_engine(local, vision=True, batch_size=self.cfg.batch_size)
            if self.cfg.qa.enabled:
                self.qa = load_engine(self.cfg.qa.model, vision=False, batch_size=self.cfg.batch_size)
        return self


def run(
    cfg: GenerateConfig,
    input: str,
    output: str,
    *,
    shard: ShardSpec = ShardSpec(),
    finalize: bool = False,
    overwrite: bool = False,
    input_fingerprints: Sequence[str] = (),
) -> dict:
    """Candidates for every images shard of `input` (this worker's share) into `output`; its stats.
    `input_fingerprints`: what else the captions come from beside the images and the config (a later round: the
    version of the model it captions with, whose path alone does not change when that model is retrained)."""
    from clipdpo.generate.shard import generate_shard

    storage = Storage()
    images = Artifact.open(storage, input, kind="images")
    identity = config_lib.to_dict(cfg)
    identity.pop("batch_size")  # speed only
    writer = ArtifactWriter(
        storage, output, "candidates", identity, [images], overwrite=overwrite, input_fingerprints=input_fingerprints
    )
    engines = _Engines(cfg, storage)

    def process(name: str):
        shard_images = images.read_shard(name)  # a corrupt shard fails before any model loads
        loaded = engines.load()
        return generate_shard(shard_images, cfg, loaded.captioners, loaded.qa)

    result = run_shards(writer, images.shard_names, process, shard, finalize_only=finalize)
    return report("generate", result, {"output": writer.uri})
