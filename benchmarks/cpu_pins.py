"""Do torch's CPU results depend on the code path the machine picks? Runs the same seeded computations in
child processes under different pins (clipdpo.determinism) and compares the bits.

    PYTHONPATH=src python benchmarks/cpu_pins.py

Each child computes: a float32 matmul (MKL sgemm), log_softmax and layer_norm (ATen's vectorised
kernels), a conv2d (oneDNN), and 5 Adam steps of a small MLP (forward, backward, update). The table shows,
per setting, a short hash of every result and the largest difference from the first setting.
"""

from __future__ import annotations

import json
import subprocess
import sys

from clipdpo import determinism

CHILD = r"""
import hashlib, json, torch
torch.manual_seed(0)
a, b = torch.randn(257, 513), torch.randn(513, 129)
x = torch.randn(64, 1000)
image, kernel = torch.randn(2, 3, 33, 33), torch.randn(8, 3, 5, 5)
model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.GELU(), torch.nn.Linear(256, 64))
optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
data = torch.randn(32, 64)
for _ in range(5):
    optimiser.zero_grad()
    loss = (model(data) - data).pow(2).mean()
    loss.backward()
    optimiser.step()
out = {"matmul": a @ b, "log_softmax": torch.log_softmax(x, dim=1),
       "layer_norm": torch.nn.functional.layer_norm(x, (1000,)),
       "conv2d": torch.nn.functional.conv2d(image, kernel),
       "train": torch.cat([p.detach().flatten() for p in model.parameters()])}
print(json.dumps({"capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
                  "values": {k: v.flatten().tolist() for k, v in out.items()},
                  "hashes": {k: hashlib.sha256(v.contiguous().numpy().tobytes()).hexdigest()[:8]
                             for k, v in out.items()}}))
"""


def run(env: dict[str, str]) -> dict:
    done = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def main() -> None:
    base = {k: v for k, v in determinism.child_env().items() if k not in determinism.PINNED_VARIABLES}
    settings = {
        "unpinned, 1 thread": {**base, "OMP_NUM_THREADS": "1"},
        "unpinned, 2 threads": {**base, "OMP_NUM_THREADS": "2"},
    }
    for capability in determinism.CAPABILITIES:
        for threads in (1, 2):
            pins = determinism.CpuPins(threads=threads, capability=capability)
            settings[f"pinned {capability}, {threads} thread(s)"] = determinism.child_env(pins, base)
    avx2 = determinism.pinned_variables(determinism.CpuPins(capability="avx2"))
    for name in ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA"):  # which variable moves which result
        settings[f"only {name}=avx2, 1 thread"] = {**base, "OMP_NUM_THREADS": "1", name: avx2[name]}
    print(f"CPU: {determinism.cpu_model()} ({', '.join(determinism.cpu_flags())})")
    reference = None
    for name, env in settings.items():
        found = run(env)
        reference = reference or found
        diffs = {
            k: max(abs(p - q) for p, q in zip(found["values"][k], reference["values"][k])) for k in found["values"]
        }
        cells = "  ".join(f"{k}={h} ({diffs[k]:.1e})" for k, h in found["hashes"].items())
        print(f"{name:<38} torch {found['capability']:<7} {found['threads']}t  {cells}")


if __name__ == "__main__":
    main()
