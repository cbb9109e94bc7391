"""`python -m clipdpo_world build` builds on the pinned CPU code paths, as the pipeline's world runs do: the same
world key (it covers the kernels) and so the same cached world."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROBE = """
import json, os
import clipdpo_world.__main__ as cli

def build_world(seed, out, threads):
    import torch
    from clipdpo_world.build import kernel_paths
    print(json.dumps({"env": os.environ.get("ATEN_CPU_CAPABILITY"), "kernels": kernel_paths()}))
    raise SystemExit(0)

cli.build_world = build_world
cli.main(["build", "--out", "unused", "--seed", "0"])
"""


def test_the_build_command_pins_the_code_paths_before_torch_loads():
    env = {k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT)])
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    probe = json.loads(out.stdout.strip().splitlines()[-1])
    assert probe["env"] == "avx2"
    assert probe["kernels"]["aten"] == "AVX2" and probe["kernels"]["threads"] == "1"
    assert probe["kernels"]["ATEN_CPU_CAPABILITY"] == "avx2" and probe["kernels"]["MKL_CBWR"] == "AVX2"
