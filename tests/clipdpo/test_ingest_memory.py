"""ingest's memory is bounded by the largest image, not the shard: 8 photos of 10000 x 10000 in one shard."""

import io
import json
import os
import shutil
import subprocess
import sys

import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SIDE = 10_000  # 100 M pixels: under Pillow's decompression-bomb limit (2 x 89.5 M), 300 MB decoded as RGB
PHOTOS = 8  # 2.4 GB decoded if a shard's images were kept at once
# The stated ceiling: the interpreter with pyarrow and PIL (~150 MB), the shard's encoded bytes, one decoded photo
# (300 MB) and room for the allocator: well under the 2.4 GB of a shard kept decoded.
CEILING_MB = 800

# The child's own peak: VmHWM, the high-water mark of its memory since exec. Not getrusage's ru_maxrss, which on
# Linux also counts the pages of the process that forked it (a pytest with torch loaded: over 1 GB).
CHILD = """
import json, re, sys
from clipdpo.ingest.__main__ import main
code = main(sys.argv[1:])
peak_kb = int(re.search(r"VmHWM:\\s*(\\d+) kB", open("/proc/self/status").read()).group(1))
print(json.dumps({"code": code, "peak_mb": peak_kb / 1024}))
"""


def _photo() -> bytes:
    """A flat-colour JPEG: small on disk, full size when decoded."""
    buffer = io.BytesIO()
    Image.new("RGB", (SIDE, SIDE), (90, 140, 200)).save(buffer, format="JPEG", quality=80)
    return buffer.getvalue()


def _bomb() -> bytes:
    buffer = io.BytesIO()
    Image.new("1", (20_000, 20_000)).save(buffer, format="PNG")  # 400 M pixels
    return buffer.getvalue()


@pytest.mark.slow(seconds=40)
def test_eight_big_photos_in_one_shard_stay_under_the_ceiling_and_a_bomb_is_refused(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "photo-0.jpg").write_bytes(_photo())
    for k in range(1, PHOTOS):
        shutil.copyfile(src / "photo-0.jpg", src / f"photo-{k}.jpg")
    (src / "bomb.png").write_bytes(_bomb())
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.join(ROOT, "src"), ROOT]), "CLIPDPO_QUIET": "1"}
    child = subprocess.run(
        [sys.executable, "-c", CHILD, "--source", str(src), "--output", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert child.returncode == 0, child.stderr[-2000:]
    result = json.loads(child.stdout.strip().splitlines()[-1])
    stats = json.loads((out / "manifest.json").read_text())["stats"]
    assert result["code"] == 0
    assert stats["images"] == PHOTOS and stats["images_failed"] == 1 and stats["failed_uris"] == [str(src / "bomb.png")]
    print(f"peak RSS {result['peak_mb']:.0f} MB for {PHOTOS} photos of {SIDE}x{SIDE} in one shard")
    assert result["peak_mb"] < CEILING_MB, result
