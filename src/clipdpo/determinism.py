"""Pinning what makes a CPU run's numbers differ between x86-64 machines, and recording what ran.

The same seeded float computation can give different bits on two CPUs because the libraries pick their
code path at run time: ATen's vectorised kernels by the widest instruction set the CPU has
(`ATEN_CPU_CAPABILITY`: default | avx2 | avx512), oneDNN its JIT kernels (`ONEDNN_MAX_CPU_ISA`), MKL its
BLAS kernels (`MKL_CBWR`, MKL's conditional numerical reproducibility), and every threaded reduction by
how the work is split (the thread count). Pinning all of them to what every machine of the kind has
(AVX2, one intra-op thread) makes the code path the same everywhere.

Except across CPU vendors: MKL honours a named CNR branch (`MKL_CBWR=AVX2`) on Intel CPUs only and runs its
AUTO branch elsewhere (Intel's "Specifying Code Branches": settings other than AUTO or COMPATIBLE are available
only for Intel processors). Seen on an AMD EPYC: a float32 matmul gave the same bits under MKL_CBWR unset, AUTO,
SSE4_2 and AVX2, and other bits under COMPATIBLE (SSE2 without approximate reciprocals, the one branch MKL keeps
the same on every vendor). So the record says which branch MKL really ran (`mkl_branch`), and tables from an
Intel and an AMD machine are two machines' numbers, not one.

The environment variables are read once, when torch (and MKL / oneDNN) load: they take effect only when
set before `import torch`. So a child process gets them in its environment (`child_env`), and a process
that sets them for itself (`apply_env`) must do so before anything imports torch; `apply_torch` sets what
can still be set after the import (threads) and says which pins did not take. `record` is what
metrics.json's "resources" carries beside every measured table: the CPU model and the pins in force.
"""

from __future__ import annotations

import os
import sys
from dataclasses import asdict, dataclass

CAPABILITIES = ("default", "avx2", "avx512")  # ATEN_CPU_CAPABILITY's values on x86-64
# the same instruction set in oneDNN's and MKL's spelling
ONEDNN_ISA = {"default": "SSE41", "avx2": "AVX2", "avx512": "AVX512_CORE"}
MKL_CBWR = {"default": "SSE4_2", "avx2": "AVX2", "avx512": "AVX512"}
PINNED_VARIABLES = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "ATEN_CPU_CAPABILITY",
    "ONEDNN_MAX_CPU_ISA",
    "DNNL_MAX_CPU_ISA",
    "MKL_CBWR",
)


@dataclass(frozen=True)
class CpuPins:
    """One intra-op thread and AVX2 code paths by default: what every x86-64 server of the usual kind runs."""

    threads: int = 1
    capability: str = "avx2"

    def __post_init__(self) -> None:
        if self.threads < 1:
            raise ValueError(f"determinism threads: {self.threads}; expected at least 1")
        if self.capability not in CAPABILITIES:
            raise ValueError(f"determinism capability: {self.capability!r}; expected one of {CAPABILITIES}")


def pinned_variables(pins: CpuPins = CpuPins()) -> dict[str, str]:
    """The environment variables that pin the code paths (read when torch loads)."""
    isa = ONEDNN_ISA[pins.capability]
    return {
        "OMP_NUM_THREADS": str(pins.threads),
        "MKL_NUM_THREADS": str(pins.threads),
        "ATEN_CPU_CAPABILITY": pins.capability,
        "ONEDNN_MAX_CPU_ISA": isa,
        "DNNL_MAX_CPU_ISA": isa,  # the name older oneDNN releases read
        "MKL_CBWR": MKL_CBWR[pins.capability],
    }


def child_env(pins: CpuPins = CpuPins(), base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a child process (world build, training) that imports torch: `base` (default this
    process's environment) with the pins set over it."""
    return {**(os.environ if base is None else base), **pinned_variables(pins)}


def apply_env(pins: CpuPins = CpuPins()) -> None:
    """Set the pins in this process's environment; refused once torch is imported (they would not take)."""
    if "torch" in sys.modules:
        raise RuntimeError(
            "determinism.apply_env: torch is already imported, so ATEN_CPU_CAPABILITY, "
            "ONEDNN_MAX_CPU_ISA and MKL_CBWR would be ignored; set them before importing torch "
            "(or start the work in a child process with child_env())"
        )
    os.environ.update(pinned_variables(pins))


def export_for_children(pins: CpuPins = CpuPins()) -> list[str]:
    """Set the pins in this process's environment for the child processes it starts (they inherit it), even
    when this process has torch loaded already; returns the pins not in force in this process itself."""
    os.environ.update(pinned_variables(pins))
    if "torch" not in sys.modules:
        return []
    return [
        f"this process loaded torch before the pins were set; its kernels stay "
        f"{sys.modules['torch'].backends.cpu.get_cpu_capability()}"
    ]


def apply_torch(pins: CpuPins = CpuPins()) -> list[str]:
    """Set torch's thread counts; the pins that are not in force in this process (empty: all are)."""
    import torch

    torch.set_num_threads(pins.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # only settable before the first parallel work; the intra-op count is what matters
        pass
    wrong = [
        f"{name}={os.environ.get(name)!r} (wanted {value!r})"
        for name, value in pinned_variables(pins).items()
        if name not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS") and os.environ.get(name) != value
    ]
    capability = torch.backends.cpu.get_cpu_capability()
    if capability.lower() != pins.capability.lower() and pins.capability != "default":
        wrong.append(f"torch runs {capability} kernels (wanted {pins.capability})")
    return wrong


def _read_cpuinfo(cpuinfo: str | None) -> str:
    if cpuinfo is not None:
        return cpuinfo
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            return handle.read()
    except OSError:
        return ""


def _cpuinfo_field(name: str, cpuinfo: str | None) -> str:
    """The first non-empty value of `name` in /proc/cpuinfo (or the text given); "unknown" where there is none."""
    for line in _read_cpuinfo(cpuinfo).splitlines():
        key, _, value = line.partition(":")
        if key.strip() == name and value.strip():
            return value.strip()
    return "unknown"


def cpu_model(cpuinfo: str | None = None) -> str:
    """The CPU's "model name" from /proc/cpuinfo (or the text given); "unknown" where there is none."""
    return _cpuinfo_field("model name", cpuinfo)


def cpu_flags(cpuinfo: str | None = None) -> list[str]:
    """The vector instruction sets the CPU offers (avx2, avx512*, amx*), from /proc/cpuinfo's flags."""
    flags = _cpuinfo_field("flags", cpuinfo)
    return sorted(f for f in flags.split() if f == "avx2" or f.startswith(("avx512", "amx")))


def cpu_vendor(cpuinfo: str | None = None) -> str:
    """The CPU's "vendor_id" (GenuineIntel, AuthenticAMD, ...) from /proc/cpuinfo; "unknown" where there is none."""
    return _cpuinfo_field("vendor_id", cpuinfo)


def mkl_branch(requested: str | None, vendor: str) -> str:
    """The CNR branch MKL runs for `MKL_CBWR=requested` on a CPU of `vendor`: a named ISA branch on Intel only,
    AUTO (MKL's own choice by the CPU) elsewhere and when none is requested."""
    branch = (requested or "AUTO").split(",")[0].removeprefix("BRANCH=").strip().upper() or "AUTO"
    if branch in ("AUTO", "COMPATIBLE") or vendor == "GenuineIntel":
        return branch
    return f"AUTO (MKL_CBWR={requested} is honoured on Intel CPUs only; this CPU: {vendor})"


def record(pins: CpuPins | None = None, cpuinfo: str | None = None) -> dict:
    """What to keep beside a measured table (metrics.json "resources"): the CPU, the variables in force in this
    process, the pins asked for (when given), and torch's kernel choice and threads when torch is loaded."""
    cpuinfo = _read_cpuinfo(cpuinfo)  # once, for the model, vendor and flags below
    vendor = cpu_vendor(cpuinfo)
    out: dict = {
        "cpu_model": cpu_model(cpuinfo),
        "cpu_vendor": vendor,
        "cpu_vector_flags": cpu_flags(cpuinfo),
        "mkl_branch": mkl_branch(os.environ.get("MKL_CBWR"), vendor),
        "cpus": os.cpu_count(),
        "environment": {name: os.environ.get(name) for name in PINNED_VARIABLES},
    }
    if pins is not None:
        out["pins"] = asdict(pins)
    torch = sys.modules.get("torch")
    if torch is not None:
        out["torch"] = {
            "version": torch.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "intra_op_threads": torch.get_num_threads(),
        }
    return out
