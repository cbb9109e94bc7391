"""Fault suite: kill ingest, filter (20 seeds each) and score (4) at random moments and at each phase boundary,
resume, and
check the artifact equals a clean run's byte for byte (data files and done-records exactly; the
manifest and done-records without their wall-clock fields: `created_unix`, per-shard `seconds`).

Kills come from the test side: an external SIGKILL after a random delay, or `fault_runner.py`,
which wraps `Storage` in the child process to die mid-shard (torn data file), after a shard but
before its done-record, during the manifest (torn), or during an overwrite's cleanup. Variants
damage or delete a finished shard before the resume. Local storage: a kill costs one process start.
"""

from __future__ import annotations

import io
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest
from PIL import Image

from clipdpo.artifacts import Artifact, ArtifactWriter, shard_name
from clipdpo.schemas import IMAGES, SCORES
from clipdpo.storage import Storage
from tests.clipdpo.test_filter_rules import _scores_table, cap, qa

RUNNER = str(Path(__file__).resolve().parents[1] / "fault_runner.py")
BOUNDARIES = ("mid_shard", "before_done", "torn_manifest", "during_cleanup")
VOLATILE = ("created_unix", "seconds")


def _scrub(value):
    """Drop wall-clock fields, recursively."""
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    return value


def snapshot(root: str) -> dict[str, bytes]:
    """What a reader of the artifact can see: every listed object, timing fields scrubbed."""
    storage = Storage()
    out = {}
    for uri in storage.list(root):
        relative = uri[len(root) + 1 :]
        if relative == "_lease.json":
            continue  # present only while (or because) a run held the output
        data = storage.read_bytes(uri)
        if relative == "manifest.json" or relative.startswith("_done/"):
            data = json.dumps(_scrub(json.loads(data)), sort_keys=True).encode()
        out[relative] = data
    return out


def _png(i: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (12 + i % 3, 10), (i * 20 % 256, 40, 200 - i * 9 % 200)).save(buffer, format="PNG")
    return buffer.getvalue()


def ingest_case(root: Path) -> tuple[list[str], list[str]]:
    src = root / "src"
    src.mkdir()
    for i in range(11):
        (src / f"img{i:02d}.png").write_bytes(_png(i))
    (src / "broken.jpg").write_bytes(b"\xff\xd8 torn")
    argv = ["--source", str(src), "--set", "shard_size=2"]
    return argv, argv + ["--set", "source_name=older"]


def filter_case(root: Path) -> tuple[list[str], list[str]]:
    storage = Storage()
    names = [shard_name(k) for k in range(5)]
    images = ArtifactWriter(storage, str(root / "images"), "images", {}, [])
    scores_rows = {}
    for k, name in enumerate(names):
        ids = [f"im{k}{j}" for j in range(3)]
        images.write_shard(
            name,
            pa.Table.from_pylist(
                [dict(image_id=i, source="t", uri=i, image=b"x", width=1, height=1) for i in ids], schema=IMAGES
            ),
        )
        scores_rows[name] = [
            row
            for i in ids
            for row in (
                cap(i, f"a dog on a red sofa {i}", 31.0 + k),
                cap(i, f"a dog on a blue sofa {i}", 28.0),
                qa(i, "What color is the sofa?", "red", "green", 26.0, 30.0, 24.0),
            )
        ]
    images.finalize(names)
    scores = ArtifactWriter(storage, str(root / "scores"), "scores", {}, [Artifact.open(storage, str(root / "images"))])
    for name in names:
        scores.write_shard(name, _scores_table(scores_rows[name]).cast(SCORES))
    scores.finalize(names)
    argv = ["--input", str(root / "scores"), "--set", "text_keep_fraction=1.0"]
    return argv, argv + ["--set", "pair_min_margin=1.0"]


def score_case(root: Path) -> tuple[list[str], list[str]]:
    """Scores from the tiny CLIP (built from a config, seeded weights): 3 shards of 2 images."""
    from clipdpo.demo import models as tiny
    from clipdpo.schemas import CANDIDATES

    storage = Storage()
    names = [shard_name(k) for k in range(3)]
    images = ArtifactWriter(storage, str(root / "images"), "images", {}, [])
    candidates_rows = {}
    for k, name in enumerate(names):
        ids = [f"im{k}{j}" for j in range(2)]
        images.write_shard(
            name,
            pa.Table.from_pylist(
                [
                    dict(image_id=i, source="t", uri=i, image=_png(3 * k + j), width=12, height=10)
                    for j, i in enumerate(ids)
                ],
                schema=IMAGES,
            ),
        )
        candidates_rows[name] = [
            dict(
                image_id=i,
                candidate_id=f"{i}/{c}",
                kind="caption",
                model="m",
                prompt_id=c,
                prompt="Describe the image.",
                text=text,
            )
            for i in ids
            for c, text in enumerate(("a red square", "a blue sky over a field"))
        ]
        candidates_rows[name].append(
            dict(
                image_id=ids[0],
                candidate_id=f"{ids[0]}/q",
                kind="qa",
                model="m",
                prompt_id=0,
                prompt="qa",
                question="What color is the square?",
                answer_pos="red",
                answer_neg="green",
            )
        )
    images.finalize(names)
    candidates = ArtifactWriter(
        storage, str(root / "candidates"), "candidates", {}, [Artifact.open(storage, str(root / "images"))]
    )
    for name in names:
        candidates.write_shard(name, pa.Table.from_pylist(candidates_rows[name], schema=CANDIDATES))
    candidates.finalize(names)
    config = root / "score.json"
    config.write_text(
        json.dumps(
            {
                "model_name": tiny.TINY_CLIP_NAME,
                "pretrained": None,
                "device": "cpu",
                "model_config_dir": tiny.build_tiny_clip(str(root / "clip")),
            }
        )
    )
    argv = ["--input", str(root / "candidates"), "--config", str(config)]
    return argv, argv + ["--set", "init_seed=1"]


def _main(stage: str):
    import importlib

    return importlib.import_module(f"clipdpo.{stage}.__main__").main


# Byte equality of a model stage's floats needs one thread count on both sides: the clean run and the killed
# runs are child processes, the resumes run in this process, and another test may have pinned torch here.
THREADS = 1


def _spawn(phase: str, nth: int, stage: str, argv: list[str]) -> subprocess.Popen:
    env = dict(os.environ, CLIPDPO_LEASE_TTL_S="30", OMP_NUM_THREADS=str(THREADS))
    return subprocess.Popen(
        [sys.executable, RUNNER, phase, str(nth), stage, *argv],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _damage(output: str, rng: random.Random, how: str) -> bool:
    """Corrupt or delete one shard that has a done-record; False when none is finished yet."""
    done = sorted(Path(output, "_done").rglob("*.json")) if Path(output, "_done").exists() else []
    if not done:
        return False
    record = rng.choice(done)
    data_file = Path(output, "data", record.parent.name, record.stem + ".parquet")
    if not data_file.exists():
        return False
    if how == "corrupt":
        data = bytearray(data_file.read_bytes())
        data[len(data) // 2] ^= 0xFF
        data_file.write_bytes(bytes(data))
    else:
        data_file.unlink()
    return True


@pytest.mark.slow(seconds=30)  # each case; seconds: for the xdist order (tests/conftest.py)
@pytest.mark.parametrize(
    "stage, make_case, seeds, random_kills, shards",
    [
        ("ingest", ingest_case, 20, 20, 6),
        ("filter", filter_case, 20, 20, 5),
        # A model stage: each kill costs a torch start (3-15 s on a busy 2-core machine): each boundary once.
        ("score", score_case, 4, 2, 3),
    ],
)
def test_kill_resume_equals_clean_run(stage, make_case, seeds, random_kills, shards, tmp_path, capsys):
    import torch

    threads_before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        _kill_resume_equals_clean_run(stage, make_case, seeds, random_kills, shards, tmp_path, capsys)
    finally:
        torch.set_num_threads(threads_before)


def _kill_resume_equals_clean_run(stage, make_case, seeds, random_kills, shards, tmp_path, capsys):
    argv, older_argv = make_case(tmp_path)
    main = _main(stage)
    clean = str(tmp_path / "clean")
    started = time.monotonic()
    child = _spawn("none", 0, stage, argv + ["--output", clean])
    assert child.wait(timeout=120) == 0, child.stderr.read()
    run_seconds = time.monotonic() - started
    expected = snapshot(clean)
    assert any(key.startswith("data/") for key in expected)
    survived = {name: 0 for name in ("random", *BOUNDARIES, "corrupt", "delete")}
    for seed in range(seeds):
        rng = random.Random(seed)
        # 1. An external SIGKILL at a random moment of the run.
        if seed < random_kills:
            output = str(tmp_path / f"random{seed}")
            child = _spawn("none", 0, stage, argv + ["--output", output])
            time.sleep(rng.uniform(0.0, run_seconds))
            child.send_signal(signal.SIGKILL)
            killed = child.wait(timeout=120) == -signal.SIGKILL
            assert main(argv + ["--output", output]) == 0
            assert snapshot(output) == expected, f"seed {seed}: random kill"
            survived["random"] += killed
        # 2. A kill at a phase boundary; half the seeds overwrite an artifact made with another config.
        phase = BOUNDARIES[seed % len(BOUNDARIES)]
        output = str(tmp_path / f"{phase}{seed}")
        overwrite = phase == "during_cleanup" or seed % 2 == 1
        extra = ["--overwrite"] if overwrite else []
        if overwrite:
            assert main(older_argv + ["--output", output]) == 0
        nth = 1 if phase == "torn_manifest" else rng.randint(1, min(5, shards))  # stale files >= 2 x shards
        child = _spawn(phase, nth, stage, argv + ["--output", output] + extra)
        code = child.wait(timeout=120)
        assert code == -signal.SIGKILL, f"seed {seed}: {phase} #{nth} was not reached ({code}): {child.stderr.read()}"
        # Variants: a finished shard (done-record written) damaged or deleted before the resume.
        how = ("corrupt", "delete", None)[seed % 3]
        if how and phase in ("mid_shard", "before_done"):
            survived[how] += _damage(output, rng, how)
        assert main(argv + ["--output", output] + extra) == 0
        assert snapshot(output) == expected, f"seed {seed}: {phase} #{nth}"
        survived[phase] += 1
    total = sum(survived.values())
    with capsys.disabled():
        print(
            f"\nfault suite, {stage}: {total} kills/damages survived, artifact identical to a clean run each "
            f"time: {survived}"
        )
    assert survived["random"] >= random_kills // 2  # most random kills land before the run ends
    assert all(survived[phase] == seeds // len(BOUNDARIES) for phase in BOUNDARIES)
    if seeds >= 20:
        assert survived["corrupt"] >= 2 and survived["delete"] >= 2


# -- A damaged finished artifact ---------------------------------------------------------------------------------
# A complete output, then one of its files damaged the way disks, people and scripts do; the rerun must redo
# exactly what is damaged (a damaged shard: its data file, done-record and export; a lost manifest: only the
# manifest, every intact shard reused after its sha256 is checked) and end byte-identical to the clean run.
DAMAGES = ("delete_shard", "truncate_shard", "flip_byte", "flip_byte_time_kept", "delete_manifest")


def _stamps(root: str) -> dict[str, tuple[int, int]]:
    """Each file's identity (inode, mtime): an atomic rewrite changes both."""
    out = {}
    for path in Path(root).rglob("*"):
        if path.is_file():
            stat = path.stat()
            out[str(path.relative_to(root))] = (stat.st_ino, stat.st_mtime_ns)
    return out


def _damage_finished(output: str, how: str, rng: random.Random) -> set[str]:
    """Damage one shard (or the manifest) of a complete artifact; the files a repair must rewrite."""
    manifest = json.loads(Path(output, "manifest.json").read_text())
    if how == "delete_manifest":
        Path(output, "manifest.json").unlink()
        return {"manifest.json"}
    shard = rng.choice(manifest["shards"])["name"]
    data_file = Path(output, manifest["data_dir"], f"{shard}.parquet")
    data = data_file.read_bytes()
    if how == "delete_shard":
        data_file.unlink()
    elif how == "truncate_shard":
        data_file.write_bytes(data[: len(data) // 2])
    else:
        stat = data_file.stat()
        flipped = bytearray(data)
        flipped[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        data_file.write_bytes(bytes(flipped))
        if how == "flip_byte_time_kept":  # as `cp -p` or a restore would leave it: only a full check sees it
            os.utime(data_file, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    done_dir = "_done/" + manifest["data_dir"].split("/", 1)[1] if "/" in manifest["data_dir"] else "_done"
    exports = {str(p.relative_to(output)) for p in Path(output).glob("export/**/*") if p.name.split(".")[0] == shard}
    return {"manifest.json", str(data_file.relative_to(output)), f"{done_dir}/{shard}.json", *exports}


def _repair_counts(stage: str, make_case, tmp_path, seeds: int) -> dict[str, int]:
    import shutil

    argv, _ = make_case(tmp_path)
    main = _main(stage)
    clean = str(tmp_path / "clean")
    assert main(argv + ["--output", clean]) == 0
    expected = snapshot(clean)
    repaired = {how: 0 for how in DAMAGES}
    for seed in range(seeds):
        rng = random.Random(seed)
        for how in DAMAGES:
            output = str(tmp_path / f"{how}{seed}")
            shutil.copytree(clean, output)  # times kept: the copy is as finished as the original
            must_rewrite = _damage_finished(output, how, rng)
            before = _stamps(output)
            extra = ["--verify", "full"] if how == "flip_byte_time_kept" else []
            assert main(argv + ["--output", output] + extra) == 0
            after = _stamps(output)
            rewritten = {name for name, stamp in after.items() if before.get(name) != stamp}
            assert rewritten == must_rewrite, f"{stage} seed {seed} {how}: rewrote {sorted(rewritten)}"
            assert snapshot(output) == expected, f"{stage} seed {seed} {how}: not the clean run's artifact"
            repaired[how] += 1
    return repaired


@pytest.mark.slow(seconds=25)
@pytest.mark.parametrize(
    "stage, make_case, seeds", [("ingest", ingest_case, 3), ("filter", filter_case, 3), ("score", score_case, 1)]
)
def test_damaged_finished_artifact_is_repaired_exactly(stage, make_case, seeds, tmp_path, capsys):
    """Before: the stage read only the manifest and said "already complete"; the damage stayed."""
    import torch

    threads_before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        repaired = _repair_counts(stage, make_case, tmp_path, seeds)
    finally:
        torch.set_num_threads(threads_before)
    with capsys.disabled():
        print(
            f"\ndamaged finished artifact, {stage}: {sum(repaired.values())} repaired exactly, byte-identical to "
            f"a clean run: {repaired}"
        )
    assert repaired == {how: seeds for how in DAMAGES}


# The train stage's output: the model's files are its shards and train_summary.json its manifest. Timing fields
# and the image-feature counters describe the process that ran, not the model: scrubbed before comparing.
TRAIN_VOLATILE = ("seconds", "samples_per_s", "tokens_per_s", "image_features", "code_version")


def _train_snapshot(root: str) -> dict[str, object]:
    def scrub(value):
        if isinstance(value, dict):
            return {k: scrub(v) for k, v in value.items() if k not in TRAIN_VOLATILE}
        return [scrub(v) for v in value] if isinstance(value, list) else value

    out: dict[str, object] = {}
    for path in sorted(Path(root).rglob("*")):
        relative = str(path.relative_to(root))
        if not path.is_file() or relative.startswith("checkpoints/"):
            continue
        if relative == "train_summary.json":  # names its own output: compared with the folder's name taken out
            out[relative] = scrub(json.loads(path.read_text().replace(root, "<output>")))
        elif relative == "metrics.jsonl":
            out[relative] = [scrub(json.loads(line)) for line in path.read_text().splitlines()]
        else:
            out[relative] = path.read_bytes()
    return out


def _damage_model(output: str, how: str, rng: random.Random) -> set[str]:
    """Damage one model file (or delete the summary); the files a repair must rewrite: that file, then the
    run's log and summary, which the resumed run writes again."""
    if how == "delete_manifest":
        Path(output, "train_summary.json").unlink()
        return {"train_summary.json", "metrics.jsonl"}
    summary = json.loads(Path(output, "train_summary.json").read_text())
    relative = rng.choice(sorted(summary["files"]))
    path = Path(output, relative)
    data, stat = path.read_bytes(), path.stat()
    if how == "delete_shard":
        path.unlink()
    elif how == "truncate_shard":
        path.write_bytes(data[: len(data) // 2])
    else:
        flipped = bytearray(data)
        flipped[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        path.write_bytes(bytes(flipped))
        if how == "flip_byte_time_kept":
            os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    return {relative, "train_summary.json", "metrics.jsonl"}


@pytest.mark.slow(seconds=120)
def test_damaged_finished_model_is_repaired_exactly(tmp_path, capsys):
    """A training run's finished model with a file deleted, truncated, a byte flipped, or its summary lost:
    the rerun resumes from the newest checkpoint (training is the only way to make the model again) and
    rewrites only the damaged file, ending byte-identical to the clean run. Before: the summary's fingerprint
    alone said "nothing to do"."""
    import shutil

    import torch
    from pairs_fixture import write_pairs
    from train_runs import tiny_train_settings

    from clipdpo.demo.models import build_tiny_llava

    model = build_tiny_llava(str(tmp_path / "tiny-llava"))
    pairs = write_pairs(str(tmp_path / "data"), n_pairs=24, n_shards=2)
    config = tmp_path / "train.json"
    config.write_text(json.dumps(tiny_train_settings(model)))
    argv = ["--input", pairs, "--config", str(config), "--quiet"]
    main = _main("train")
    threads_before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        clean = str(tmp_path / "clean")
        assert main(argv + ["--output", clean]) == 0
        expected = _train_snapshot(clean)
        assert any(name.startswith("model/") for name in expected)
        repaired = {how: 0 for how in DAMAGES}
        rng = random.Random(0)
        for how in DAMAGES:
            output = str(tmp_path / how)
            shutil.copytree(clean, output)
            must_rewrite = _damage_model(output, how, rng)
            before = _stamps(output)
            extra = ["--verify", "full"] if how == "flip_byte_time_kept" else []
            assert main(argv + ["--output", output] + extra) == 0
            after = _stamps(output)
            rewritten = {name for name, stamp in after.items() if before.get(name) != stamp}
            assert rewritten == must_rewrite, f"train {how}: rewrote {sorted(rewritten)}"
            assert _train_snapshot(output) == expected, f"train {how}: not the clean run's model"
            repaired[how] += 1
    finally:
        torch.set_num_threads(threads_before)
    with capsys.disabled():
        print(
            f"\ndamaged finished model, train: {sum(repaired.values())} repaired exactly, byte-identical to a clean "
            f"run: {repaired}"
        )
    assert repaired == {how: 1 for how in DAMAGES}
