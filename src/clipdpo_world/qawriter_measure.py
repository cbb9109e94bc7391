"""How right the world QA writer is on the world LVLM's own captions, through the generate stage's code.

python -m clipdpo_world.qawriter_measure --world <world root> [--images 100]

Takes the first `--images` pool images of a built world, runs `generate_shard` with the world's generate
config with QA on (the LVLM's sampled captions, then the QA writer on them, engine hf; the writer is
trained first when the world has none), and scores every QA row against the pool's truth.jsonl: parsed
rows per question asked, and the share right (question of the writer's forms, correct answer true,
wrong answer false), by question type.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path


def measure(world_root: str, images: int) -> dict:
    import pyarrow as pa

    from clipdpo import config as config_lib
    from clipdpo.engines import load_engine
    from clipdpo.generate.config import GenerateConfig
    from clipdpo.generate.qa_parse import QAItem
    from clipdpo.generate.shard import generate_shard
    from clipdpo_world import data, qawriter, qawriter_build
    from clipdpo_world.build import WorldConfig, build, world_key
    from clipdpo_world.povid_source import scene_from_truth
    from clipdpo_world.stageconfigs import world_qa_config

    record = json.loads(Path(world_root, "world.json").read_text())
    world = WorldConfig(seed=record["config"]["seed"])
    if record["key"] != world_key(world):  # build() would make a new world rather than read this one
        raise ValueError(f"{world_root}: built under key {record['key']}, today's code makes {world_key(world)}")
    paths = build(world, str(Path(world_root).parent), say=lambda _: None)
    generate = {**paths.configs["generate"], "qa": world_qa_config(paths.root)}
    cfg = config_lib.from_dict(GenerateConfig, generate)
    truth = data.read_truth(paths.images)
    ids = sorted(truth)[:images]
    table = pa.table({"image_id": ids, "image": [Path(paths.images, f"{i}.png").read_bytes() for i in ids]})
    captioners = {spec.name: load_engine(spec, vision=True, batch_size=cfg.batch_size) for spec in cfg.captioners}
    qa_engine = load_engine(cfg.qa.model, vision=False, batch_size=cfg.batch_size)
    rows, stats = generate_shard(table, cfg, captioners, qa_engine)
    asked: Counter[str] = Counter()  # question type -> rows of it
    right: Counter[str] = Counter()  # question type -> rows whose answers are right
    for row in rows.to_pylist():
        if row["kind"] != "qa":
            continue
        item = QAItem(row["question"], row["answer_pos"], row["answer_neg"])
        kind = qawriter_build.question_type(item)
        asked[kind] += 1
        right[kind] += qawriter.is_right(scene_from_truth(truth[row["image_id"]]), item)
    total = cfg.qa.questions_per_image * len(ids)
    return {
        "images": len(ids),
        "questions_asked": total,
        "qa_rows": sum(asked.values()),
        "right": sum(right.values()),
        "right_share_of_rows": round(sum(right.values()) / max(1, sum(asked.values())), 4),
        "by_type": {k: f"{right[k]}/{asked[k]}" for k in sorted(asked)},
        "stats": {k: stats[k] for k in ("captions", "qa_rows", "qa_unparseable", "qa_replies_empty")},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m clipdpo_world.qawriter_measure",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--world", required=True, help="a built world's root (holding world.json)")
    parser.add_argument("--images", type=int, default=100)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    print(json.dumps(measure(args.world, args.images), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
