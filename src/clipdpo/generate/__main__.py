"""python -m clipdpo.generate --input IMAGES_URI --output CANDIDATES_URI [--config F] [--set k=v] [--shard i/n]"""

from __future__ import annotations


from clipdpo import config as config_lib
from clipdpo.artifacts import Artifact, ArtifactWriter
from clipdpo.generate.config import GenerateConfig
from clipdpo.generate.engines import Engine, load_engine
from clipdpo.generate.shard import generate_shard
from clipdpo.stage import build_parser, entry_point, load_config, print_summary, run_shards
from clipdpo.storage import Storage


def run(argv: list[str] | None = None) -> dict:
    args = build_parser("python -m clipdpo.generate", __doc__, "images artifact URI").parse_args(argv)
    storage = Storage()
    cfg = load_config(GenerateConfig, args, storage)
    if cfg is None:
        return {}
    images = Artifact.open(storage, args.input, kind="images")
    identity = config_lib.to_dict(cfg)
    identity.pop("batch_size")  # speed only
    writer = ArtifactWriter(storage, args.output, "candidates", identity, [images], overwrite=args.overwrite)
    engines: dict[str, Engine] = {}
    qa_engine: list[Engine] = []

    def process(name: str):
        if not engines:  # loaded on first use: a finished or resumed run loads nothing
            for spec in cfg.captioners:
                engines[spec.name] = load_engine(spec, vision=True, batch_size=cfg.batch_size)
            if cfg.qa.enabled:
                qa_engine.append(load_engine(cfg.qa.model, vision=False, batch_size=cfg.batch_size))
        return generate_shard(images.read_shard(name), cfg, engines, qa_engine[0] if qa_engine else None)

    result = run_shards(writer, images.shard_names, process, args.shard, finalize_only=args.finalize)
    print_summary("generate", result, {"output": writer.uri})
    return result.manifest.stats if result.manifest else {}


main = entry_point(run)


if __name__ == "__main__":
    raise SystemExit(main())
