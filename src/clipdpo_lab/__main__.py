"""python -m clipdpo_lab COMMAND [...]: the experiments' command line (each command's --help says more)."""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "run": ("clipdpo_lab.run", "the kfp pipeline on a synthetic world, locally, with arms and controls"),
    "measure": ("clipdpo_lab.measure", "every stage on a world in this process: base vs CLIP-DPO vs control"),
    "rules-ablation": ("clipdpo_lab.rules_ablation", "the paper's margin and length rules on and off"),
    "loss-ablation": ("clipdpo_lab.loss_ablation", "the DPO loss variants of the paper's Table 5"),
    "judges": ("clipdpo_lab.judges", "each judge (CLIP, SigLIP, noun-level) ranking the world LLaVA's own captions"),
    "arms-table": ("clipdpo_lab.arms_table", "the arms of finished world runs side by side"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        listing = "\n".join(f"  {name:<15} {text}" for name, (_, text) in COMMANDS.items())
        print(
            f"usage: python -m clipdpo_lab COMMAND [...]\ncommands:\n{listing}",
            file=sys.stdout if argv[:1] in (["-h"], ["--help"]) else sys.stderr,
        )
        return 0 if argv[:1] in (["-h"], ["--help"]) else 2
    module, _ = COMMANDS[argv[0]]
    return importlib.import_module(module).main(argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
