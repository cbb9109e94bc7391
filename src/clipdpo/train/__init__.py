"""The train stage: DPO fine-tuning of a LLaVA-style model on a pairs artifact.

`run(cfg, input_uri, output_uri)` is the stage; `python -m clipdpo.train` parses flags into a
TrainConfig and calls it (under torchrun for many processes). The parts, each testable alone:
  recipe     TrainRun: setup -> train (the loop) -> cleanup (outputs)
  objective  the DPO loss of a micro-batch against precomputed or live reference log-probs
  callbacks  metrics and checkpoints after each optimizer step
  loss, logps, schedule   pure maths;  encode, data   pairs -> token batches
  layouts, prefix   how a batch goes through the model: shared prefix (image + prompt once per
             pair, logits only at response positions) or concatenated rows
  refcache   reference log-probs computed once and reused;  model, backends, dist, checkpoint
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from clipdpo.storage import Storage
    from clipdpo.train.config import TrainConfig


def run(
    cfg: "TrainConfig", input_uri: str, output_uri: str, *, overwrite: bool = False, storage: "Storage | None" = None
) -> dict:
    """Train on the pairs artifact at `input_uri` into `output_uri`; returns the run's summary (recipe.run)."""
    from clipdpo.train.recipe import run as run_recipe  # torch and transformers load only when training

    return run_recipe(cfg, input_uri, output_uri, overwrite=overwrite, storage=storage)
