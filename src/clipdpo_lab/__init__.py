"""clipdpo_lab: the experiments on the synthetic world (clipdpo_world) over the product (clipdpo).

A world run through the product's local pipeline (`run`), the arms and controls trained beside it (`arms`,
`control`), the paper's ablations (`rules_ablation`, `loss_ablation`, `arms_table`) and the in-process
measurements (`effect`, `smalleffect`), all through one in-process runner (`localrun`).
The product imports nothing from here; `python -m clipdpo_lab --help` lists the commands.
"""
