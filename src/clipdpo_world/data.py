"""Write world images as PNG files (a folder `ingest` reads like any dataset) with their ground truth."""

from __future__ import annotations

import json
import os
from pathlib import Path

from clipdpo_world.scene import Scene, SceneConfig, png_bytes, render, sample_scene


def scenes(seed: int, split: str, count: int, cfg: SceneConfig = SceneConfig()) -> list[Scene]:
    return [sample_scene(seed, split, index, cfg) for index in range(count)]


def write_folder(folder: str, items: list[Scene], cfg: SceneConfig = SceneConfig()) -> str:
    """`<folder>/<image_id>.png` per scene and `<folder>/truth.jsonl` (one scene's objects a line).

    The folder is written under a temporary name and renamed, so a crash leaves no half folder."""
    target = Path(folder)
    partial = target.with_name(target.name + ".partial")
    partial.mkdir(parents=True, exist_ok=True)
    with open(partial / "truth.jsonl", "w") as truth:
        for scene in items:
            (partial / f"{scene.image_id}.png").write_bytes(png_bytes(render(scene, cfg)))
            truth.write(json.dumps(scene.to_dict()) + "\n")
    if target.exists():
        raise FileExistsError(f"{target}: already exists; the world build writes each folder once")
    os.replace(partial, target)
    return str(target)


def read_truth(folder: str) -> dict[str, dict]:
    """image_id -> ground truth, from a folder `write_folder` wrote."""
    path = Path(folder, "truth.jsonl")
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing (a world image folder has truth.jsonl next to its PNGs)")
    return {row["image_id"]: row for row in map(json.loads, path.read_text().splitlines())}
