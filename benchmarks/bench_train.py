"""make bench (training part): DPO samples/s, clipdpo vs TRL's DPOTrainer, same model, data, batch.

Both train the tiny LLaVA (built from a config) for one epoch on the same pairs, batch size and
max length, on this machine's CPU, one after the other in this process. clipdpo is timed twice:
the training loop alone (reference log-probs precomputed, one concatenated forward per step) and
end to end (index + reference pass + loop). TRL is timed as `trainer.train()` (its per-step
reference forward included; its dataset tokenisation at construction reported apart).
Results: bench-results/train.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

from train_timing import timed_train, tiny_llava_and_pairs

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def trl_dataset(pairs_uri: str):
    """The same good pairs in TRL's conversational vision format."""
    import io

    import pyarrow.parquet as pq
    from datasets import Dataset

    from clipdpo.artifacts import Artifact
    from clipdpo.images import decode_image
    from clipdpo.storage import Storage
    from clipdpo.train.data import PAIR_COLUMNS

    storage = Storage()
    pairs = Artifact.open(storage, pairs_uri, kind="pairs")
    rows = {"images": [], "prompt": [], "chosen": [], "rejected": []}
    for _, table in pairs.iter_shards(columns=PAIR_COLUMNS):
        data = table.to_pydict()
        images = {}
        for uri in set(data["image_uri"]):
            t = pq.read_table(io.BytesIO(storage.read_bytes(uri)), columns=["image_id", "image"]).to_pydict()
            images.update(zip(t["image_id"], t["image"]))
        for k in range(table.num_rows):
            rows["images"].append([decode_image(images[data["image_id"][k]])])
            rows["prompt"].append(
                [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": data["prompt"][k]}]}]
            )
            rows["chosen"].append([{"role": "assistant", "content": [{"type": "text", "text": data["chosen"][k]}]}])
            rows["rejected"].append([{"role": "assistant", "content": [{"type": "text", "text": data["rejected"][k]}]}])
    return Dataset.from_dict(rows)


def run_clipdpo(model: str, pairs: str, output: str, batch: int, max_length: int, lr: float) -> dict:
    return timed_train(model, pairs, output, batch, max_length, learning_rate=lr, epochs=1)


def run_trl(model_path: str, pairs: str, output: str, batch: int, max_length: int, lr: float) -> dict:
    from transformers import AutoProcessor
    from trl import DPOConfig, DPOTrainer

    from clipdpo.train.config import TrainConfig
    from clipdpo.train.model import load_model, prepare_policy

    dataset = trl_dataset(pairs)
    # clipdpo's default trainable set (tower frozen, projector trained), for LLaVA and Qwen VL alike
    config = TrainConfig(model=model_path, dtype="float32")
    model = prepare_policy(load_model(model_path, config), config)
    processor = AutoProcessor.from_pretrained(model_path)
    args = DPOConfig(
        output_dir=output,
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=1,
        num_train_epochs=1,
        learning_rate=lr,
        beta=0.1,
        loss_type=["sigmoid"],
        max_length=max_length,
        lr_scheduler_type="cosine",
        warmup_steps=0,
        weight_decay=0.0,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        gradient_checkpointing=False,
        dataloader_num_workers=0,
        seed=42,
        bf16=False,
        disable_tqdm=True,
    )
    started = time.monotonic()
    trainer = DPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=processor)
    setup = time.monotonic() - started
    started = time.monotonic()
    result = trainer.train()
    seconds = time.monotonic() - started
    samples = len(dataset)
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return {
        "samples": samples,
        "train_seconds": seconds,
        "setup_seconds": setup,
        "samples_per_s": samples / seconds,
        "samples_per_s_total": samples / (seconds + setup),
        "final_loss": losses[-1] if losses else None,
        "trainer_reported_samples_per_s": result.metrics.get("train_samples_per_second"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pairs", type=int, default=512)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=1024)  # holds LLaVA-1.5: 576 image tokens + text
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1: a second busy core slows a 2-thread run ~10x on these machines)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import torch

    torch.set_num_threads(args.threads)
    with tiny_llava_and_pairs("train", args.pairs, n_shards=4) as (work, model, pairs):
        ours = run_clipdpo(model, pairs, str(work / "ours"), args.batch, args.max_length, 5e-6)
        # A rerun with other training settings (here the LR) on the same pairs and reference model,
        # as a CI retraining does: the reference log-probs come from the cache.
        rerun = run_clipdpo(model, pairs, str(work / "ours-rerun"), args.batch, args.max_length, 1e-5)
        cpu_started = time.process_time()
        peer = run_trl(model, pairs, str(work / "trl"), args.batch, args.max_length, 5e-6)
        peer["cpu_seconds_incl_dataset"] = time.process_time() - cpu_started
    result = {
        "pairs": args.pairs,
        "batch": args.batch,
        "max_length": args.max_length,
        "threads": args.threads,
        "clipdpo": ours,
        "clipdpo_rerun": rerun,
        "trl": peer,
        "ratio_loop": ours["samples_per_s_loop"] / peer["samples_per_s"],
        "ratio_total": ours["samples_per_s_total"] / peer["samples_per_s_total"],
        "ratio_rerun": rerun["samples_per_s_total"] / peer["samples_per_s_total"],
        # CPU seconds of this process: the same end-to-end ratios, far less exposed to other processes
        # on a shared machine (whose load moves these few-second wall times by 2x)
        "cpu_ratio_total": peer["cpu_seconds_incl_dataset"] / ours["total_cpu_seconds"],
        "cpu_ratio_rerun": peer["cpu_seconds_incl_dataset"] / rerun["total_cpu_seconds"],
    }
    print(
        f"| run | samples | seconds | samples/s |\n|---|---|---|---|\n"
        f"| clipdpo, training loop | {ours['samples']} | {ours['loop_seconds']:.2f} | "
        f"{ours['samples_per_s_loop']:.1f} |\n"
        f"| clipdpo, end to end (index + reference pass + loop + save) | {ours['samples']} | "
        f"{ours['total_seconds']:.2f} | {ours['samples_per_s_total']:.1f} |\n"
        f"| clipdpo, end to end, rerun reusing the reference cache | {rerun['samples']} | "
        f"{rerun['total_seconds']:.2f} | {rerun['samples_per_s_total']:.1f} |\n"
        f"| TRL DPOTrainer.train() | {peer['samples']} | {peer['train_seconds']:.2f} | {peer['samples_per_s']:.1f} |\n"
        f"| TRL incl. dataset preparation | {peer['samples']} | {peer['train_seconds'] + peer['setup_seconds']:.2f} | "
        f"{peer['samples_per_s_total']:.1f} |\n"
        f"ratio (loop vs train()): {result['ratio_loop']:.2f}x; end to end: {result['ratio_total']:.2f}x; "
        f"rerun end to end: {result['ratio_rerun']:.2f}x (goal >= 1.5x)\n"
        f"CPU-time ratios (TRL incl. dataset / clipdpo): end to end {result['cpu_ratio_total']:.2f}x; "
        f"rerun {result['cpu_ratio_rerun']:.2f}x"
    )
    out = ROOT / "bench-results"
    out.mkdir(exist_ok=True)
    (out / "train.json").write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
