"""CPU pins (clipdpo.determinism): the variables child processes get, the CPU record, and that torch in a
child really runs the pinned kernels (the variables only act when set before torch is imported)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from clipdpo import determinism

CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse sse2 avx avx2 avx512f avx512bw amx_tile fma

processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8480+
"""
SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "src")


def test_the_default_pins_are_one_thread_and_avx2_everywhere():
    assert determinism.pinned_variables() == {
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "ATEN_CPU_CAPABILITY": "avx2",
        "ONEDNN_MAX_CPU_ISA": "AVX2",
        "DNNL_MAX_CPU_ISA": "AVX2",
        "MKL_CBWR": "AVX2",
    }
    wide = determinism.pinned_variables(determinism.CpuPins(threads=4, capability="avx512"))
    assert (wide["OMP_NUM_THREADS"], wide["ATEN_CPU_CAPABILITY"], wide["ONEDNN_MAX_CPU_ISA"], wide["MKL_CBWR"]) == (
        "4",
        "avx512",
        "AVX512_CORE",
        "AVX512",
    )
    with pytest.raises(ValueError, match="capability"):
        determinism.CpuPins(capability="sse9")
    with pytest.raises(ValueError, match="threads"):
        determinism.CpuPins(threads=0)


def test_child_env_keeps_the_rest_and_overrides_the_pins():
    env = determinism.child_env(base={"PATH": "/bin", "OMP_NUM_THREADS": "8", "MKL_CBWR": "AUTO"})
    assert env["PATH"] == "/bin" and env["OMP_NUM_THREADS"] == "1" and env["MKL_CBWR"] == "AVX2"
    assert set(env) == {"PATH"} | set(determinism.PINNED_VARIABLES)


def test_exported_pins_reach_this_process_environment(monkeypatch):
    for name in determinism.PINNED_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    determinism.export_for_children(determinism.CpuPins(threads=2))
    assert {k: os.environ[k] for k in determinism.PINNED_VARIABLES} == determinism.pinned_variables(
        determinism.CpuPins(threads=2)
    )


def test_cpu_model_and_flags_from_cpuinfo():
    assert determinism.cpu_model(CPUINFO) == "Intel(R) Xeon(R) Platinum 8480+"
    assert determinism.cpu_flags(CPUINFO) == ["amx_tile", "avx2", "avx512bw", "avx512f"]
    assert determinism.cpu_model("processor : 0\n") == "unknown" and determinism.cpu_flags("") == []
    record = determinism.record(determinism.CpuPins(), cpuinfo=CPUINFO)
    assert record["cpu_model"] == "Intel(R) Xeon(R) Platinum 8480+" and record["pins"] == {
        "threads": 1,
        "capability": "avx2",
    }
    assert set(record["environment"]) == set(determinism.PINNED_VARIABLES)
    assert "pins" not in determinism.record(cpuinfo=CPUINFO)  # none asked for: only what is in force
    assert record["cpu_vendor"] == "GenuineIntel" and determinism.cpu_vendor("model name : x\n") == "unknown"


def test_mkl_branch_names_the_branch_mkl_really_runs_on_each_vendor():
    """MKL takes a named CNR branch on Intel CPUs only (its guide, "Specifying Code Branches"); elsewhere AUTO."""
    assert determinism.mkl_branch("AVX2", "GenuineIntel") == "AVX2"
    assert determinism.mkl_branch("BRANCH=avx2,STRICT", "GenuineIntel") == "AVX2"
    assert determinism.mkl_branch(None, "GenuineIntel") == "AUTO"
    on_amd = determinism.mkl_branch("AVX2", "AuthenticAMD")
    assert on_amd.startswith("AUTO (") and "AuthenticAMD" in on_amd and "MKL_CBWR=AVX2" in on_amd
    assert determinism.mkl_branch("COMPATIBLE", "AuthenticAMD") == "COMPATIBLE"  # the one branch kept on every vendor
    amd = CPUINFO.replace("GenuineIntel", "AuthenticAMD")
    assert determinism.record(cpuinfo=amd)["mkl_branch"] == determinism.mkl_branch(
        os.environ.get("MKL_CBWR"), "AuthenticAMD"
    )
    if os.path.exists("/proc/cpuinfo"):  # this machine's own, read the plain way
        names = [line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")]
        assert determinism.cpu_model() == (names[0] if names else "unknown")


CHILD = """
import json, sys
from clipdpo import determinism
pins = determinism.CpuPins(capability=sys.argv[1])
if sys.argv[2] == "before":
    determinism.apply_env(pins)
import torch
torch.manual_seed(0)
a, b = torch.randn(65, 129), torch.randn(129, 33)
if sys.argv[2] == "after":
    try:
        determinism.apply_env(pins)
    except RuntimeError as err:
        print(json.dumps({"refused": str(err)}))
        raise SystemExit(0)
print(json.dumps({"wrong": determinism.apply_torch(pins), "record": determinism.record(pins),
                  "product": (torch.log_softmax(a @ b, dim=1)).flatten().tolist()}))
"""


def child(capability: str, when: str, env: dict[str, str] | None = None) -> dict:
    env = {**(env or {k: v for k, v in os.environ.items() if k not in determinism.PINNED_VARIABLES}), "PYTHONPATH": SRC}
    done = subprocess.run(
        [sys.executable, "-c", CHILD, capability, when],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow(seconds=60)
def test_pins_set_before_torch_loads_choose_its_kernels_and_after_are_refused():
    pytest.importorskip("torch")
    avx2 = child("avx2", "before")
    assert avx2["wrong"] == [] and avx2["record"]["torch"]["cpu_capability"] == "AVX2"
    assert avx2["record"]["torch"]["intra_op_threads"] == 1
    assert avx2["record"]["environment"]["MKL_CBWR"] == "AVX2"
    # the same pins through a child's environment: the same bits
    again = child(
        "avx2",
        "none",
        determinism.child_env(base={k: v for k, v in os.environ.items() if k not in determinism.PINNED_VARIABLES}),
    )
    assert again["product"] == avx2["product"] and again["wrong"] == []
    # once torch is imported the variables would be ignored: refused, with the reason
    assert "already imported" in child("avx2", "after")["refused"]
