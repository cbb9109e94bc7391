"""make bench (DPO at LLaVA-1.5's or Qwen2.5-VL's shapes): TRL DPOTrainer vs clipdpo's concatenated and
shared-prefix forwards.

`--family llava` (the default): the model is narrow but laid out like LLaVA-1.5: a CLIP tower at 336 px
with 14 px patches (576 image tokens in front of every prompt), a 2-layer 256-wide Llama (4 heads, MLP
688 = LLaMA's 2.69x; `--layers` for a deeper one: the shared prefix's last layer runs only where the loss reads
its output, lastlayer.py, which saves ~1/layers of the work, so depth moves the ratios) and the tiny tokenizer
(vocabulary ~400: at this width the head then costs about what
a 32k head costs next to a 7B model's layers, ~5% of a position's work). Prompts and responses
are random words of the tokenizer's corpus with token counts drawn from a seeded distribution:
prompt ~ U{20..40}, chosen and rejected ~ U{40..120} independently (text tokens; the chat
template adds ~10 and the image 576).

`--family qwen2_5_vl`: laid out like Qwen2.5-VL-7B (tests/tiny_qwen.py's classes): a vision transformer over
14 px patches with 112 px attention windows whose 2x2 merger gives one token per 28x28 pixels, every image
resized to 448x448 (256 image tokens), and a 2-layer 256-wide language model with M-RoPE (4 query heads on 1
key/value head, as the 7B's 28 on 4 share them; MLP 1352 = the 7B's 5.29x; rotary sections 8/12/12, the 7B's
16/24/24 halved with the head size). Its tower holds its projector (the merger), so there is no image feature
cache: each forward encodes its images (once per pair in the shared prefix, once per row concatenated).

Same texts either way. One torch thread, everything in this process, one after
the other, on the same pairs, batch and max length:

- TRL `DPOTrainer.train()` (reference forward inside every step; its dataset preparation at
  construction reported apart);
- clipdpo `train()` with forward=concatenated and forward=shared_prefix, each a first run
  (index + reference pass + loop + save; a fresh reference cache each); the loop is the sum of
  the per-step times in metrics.jsonl. First runs and TRL are also timed in CPU seconds of this
  process (time.process_time), which other processes on a shared machine disturb far less;
- the reference pass alone (forward only, no grad, batches encoded beforehand) in both layouts;
- peak memory of one training micro-step (forward + backward of the DPO loss) and of one
  reference forward, in both layouts: the largest total of live tensors created during it
  (activations, temporaries, gradients; not the weights), counted by a dispatch mode in one
  extra, untimed step each, on the same first batch;
- a profile of one training step (image features from the cache, as the run's loop reads them) and
  of one reference forward (images encoded, as the reference pass does), in both layouts: time per
  part (vision tower, projector, language model, head, and for a step the rest: loss + backward)
  and the top operators;
- how many images each first run encoded and how many it reused (imagefeatures.py).

`--json` prints one JSON object as the last line; results also go to bench-results/prefix.json (LLaVA) or
prefix-<family>.json.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

PROMPT_TOKENS = (20, 40)  # inclusive ranges, uniform
RESPONSE_TOKENS = (40, 120)
SHAPE = dict(image_size=336, patch_size=14, vision_hidden=64, hidden=256, intermediate=688, heads=4)
# Qwen2.5-VL-7B's image path at the LLaVA bench's width: 448 / 14 = 32 patches a side, merged 2x2 -> 16 x 16 tokens
QWEN_IMAGE_SIDE = 448
QWEN2_5_VL_SHAPE = dict(
    patch=14,
    window=4,  # merged tokens per side: 4 x 28 = the 7B's 112-pixel windows
    pixels=(QWEN_IMAGE_SIDE**2, QWEN_IMAGE_SIDE**2),
    vision_hidden=64,
    hidden=256,
    intermediate=1352,
    heads=4,
    kv_heads=1,
    mrope_section=(8, 12, 12),
)
FAMILIES = ("llava", "qwen2_5_vl")


def build_model(family: str, path: str, layers: int) -> tuple[str, dict]:
    """Save the bench's narrow model of `family` at `path`; returns the path and the shape it was built with."""
    if family == "llava":
        from clipdpo.demo.models import LlavaShape, build_tiny_llava

        shape = {**SHAPE, "layers": layers}
        return build_tiny_llava(path, shape=LlavaShape(**shape)), shape
    from tiny_qwen import QwenShape, build_tiny_qwen

    shape = {**QWEN2_5_VL_SHAPE, "layers": layers}
    return build_tiny_qwen(path, family, shape=QwenShape(**shape)), shape


def words_of(tokenizer, rng, target: int, vocabulary: list[str]) -> str:
    """Random corpus words whose token count is `target` (words are 1-2 tokens: add, then trim)."""
    words = list(rng.choice(vocabulary, size=target))
    count = lambda: len(tokenizer(" ".join(words), add_special_tokens=False)["input_ids"])  # noqa: E731
    while count() > target and len(words) > 1:
        words.pop()
    while count() < target:
        words.append(str(rng.choice(vocabulary)))
    return " ".join(words)


def make_texts(tokenizer, n: int, seed: int) -> list[tuple[str, str, str]]:
    import numpy as np

    from clipdpo.demo.models import CORPUS

    rng = np.random.default_rng(seed)
    vocabulary = sorted(set(CORPUS.split()) - {".", "?", ":"})
    rows = []
    for _ in range(n):
        p, c, r = (
            rng.integers(PROMPT_TOKENS[0], PROMPT_TOKENS[1] + 1),
            *rng.integers(RESPONSE_TOKENS[0], RESPONSE_TOKENS[1] + 1, size=2),
        )
        rows.append(
            (
                words_of(tokenizer, rng, p, vocabulary),
                words_of(tokenizer, rng, c, vocabulary),
                words_of(tokenizer, rng, r, vocabulary),
            )
        )
    return rows


def text_token_stats(tokenizer, texts) -> dict:
    stats = {}
    for k, name in enumerate(("prompt", "chosen", "rejected")):
        counts = [len(tokenizer(t[k], add_special_tokens=False)["input_ids"]) for t in texts]
        stats[name] = {"min": min(counts), "mean": round(sum(counts) / len(counts), 1), "max": max(counts)}
    return stats


def run_ours(model: str, pairs: str, work: Path, forward: str, batch: int, max_length: int) -> dict:
    from clipdpo.storage import Storage, join
    from clipdpo.train import run as train
    from clipdpo.train.config import TrainConfig

    output = str(work / f"ours-{forward}")
    cfg = TrainConfig(
        model=model,
        learning_rate=5e-6,
        global_batch_size=batch,
        per_device_batch_size=batch,
        max_length=max_length,
        warmup_ratio=0.0,
        epochs=1,
        save_steps=10**6,
        forward=forward,
        reference_cache=str(work / f"refcache-{forward}"),
    )  # a first run: no cache to reuse
    started, cpu_started = time.monotonic(), time.process_time()
    summary = train(cfg, pairs, output)
    total, cpu = time.monotonic() - started, time.process_time() - cpu_started
    rows = [json.loads(line) for line in Storage().read_bytes(join(output, "metrics.jsonl")).decode().splitlines()]
    samples = batch * len(rows)
    loop = sum(r["seconds"] for r in rows)
    return {
        "samples": samples,
        "loop_seconds": round(loop, 2),
        "first_run_seconds": round(total, 2),
        "first_run_cpu_seconds": round(cpu, 2),
        "samples_per_s_loop": samples / loop,
        "samples_per_s_first_run": samples / total,
        "losses": [r["loss"] for r in rows],
        "data": summary["data"],
        "image_features": summary["image_features"],
    }


def live_tensor_peak_mode():
    """A TorchDispatchMode class that counts the bytes of every tensor storage created while it is
    active (forward, backward, gradients; not the weights that already exist) until it is freed,
    and keeps the largest total. CPU torch has no allocator statistics; this is what MemTracker
    does, without its parameter hooks (which refuse frozen parameters such as the vision tower)."""
    import weakref

    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves
    from torch.utils.weak import WeakIdKeyDictionary

    class Mode(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.seen = WeakIdKeyDictionary()
            self.current = self.peak = 0

        def _free(self, nbytes: int) -> None:
            self.current -= nbytes

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for tensor in tree_leaves(out):
                if isinstance(tensor, torch.Tensor) and not tensor.is_meta:
                    storage = tensor.untyped_storage()
                    if storage not in self.seen:
                        self.seen[storage] = True
                        self.current += storage.nbytes()
                        self.peak = max(self.peak, self.current)
                        weakref.finalize(storage, self._free, storage.nbytes())
            return out

    return Mode


def LiveTensorPeak():  # noqa: N802  a class made on first use, so that importing this file stays light
    return live_tensor_peak_mode()()


def load_policy(model_path: str):
    """The model as a run with the default config trains it: the vision tower frozen, the projector
    (LLaVA's, or Qwen's merger inside its tower) and the language model trained."""
    from clipdpo.train.config import TrainConfig
    from clipdpo.train.model import load_model, prepare_policy

    config = TrainConfig(model=model_path, dtype="float32")
    return prepare_policy(load_model(model_path, config), config)


def model_parts(model) -> dict:
    """The modules whose forward time the profile reports: LLaVA's tower and projector apart; Qwen VL's
    tower with its merger (the projector) inside it."""
    inner = model.model
    if hasattr(inner, "vision_tower"):
        tower = {"vision_tower": inner.vision_tower, "projector": inner.multi_modal_projector}
    else:
        tower = {"vision_tower (incl. merger)": inner.visual}
    return {**tower, "language_model": inner.language_model, "lm_head": model.lm_head}


class Layouts:
    """The two forwards on pre-encoded batches, as the training loop and the reference pass run them."""

    def __init__(self, model_path: str, texts, batch: int, max_length: int):
        import torch
        from pairs_fixture import png
        from PIL import Image
        from transformers import AutoProcessor

        from clipdpo.train import imagefeatures, layouts
        from clipdpo.train.encode import PairEncoder

        processor = AutoProcessor.from_pretrained(model_path)
        self.model = load_policy(model_path)
        # the training run's layouts; the shared prefix switches SDPA to its block-sparse form,
        # which leaves the concatenated batches on plain SDPA
        self.layouts = {
            "concatenated": layouts.choose("concatenated", self.model),
            "shared_prefix": layouts.choose("shared_prefix", self.model),
        }
        encoder = PairEncoder(processor, max_length)
        pad = processor.tokenizer.pad_token_id
        examples = [(Image.open(io.BytesIO(png(k))).convert("RGB"), *t) for k, t in enumerate(texts)]
        encoded = [encoder.encode_batch(examples[s : s + batch], True) for s in range(0, len(examples), batch)]
        self.image_tokens = int((encoded[0][0].prompt_ids == encoder.image_token_id).sum())
        self.batches = {
            name: [
                {**layout.collate(e, pad), "image_ids": torch.arange(s * batch, s * batch + len(e))}
                for s, e in enumerate(encoded)
            ]
            for name, layout in self.layouts.items()
        }
        # what a run's loop reads; None where a run has no cache either (Qwen VL: its projector is in its tower)
        cacheable = imagefeatures.disabled_reason(self.model, two_stage=False, budget_mb=1024) is None
        self.features = imagefeatures.ImageFeatureCache(self.model, 2**30) if cacheable else None

    def logps(self, layout: str, batch: dict):
        import torch

        return self.layouts[layout].logps(self.model, batch, torch.device("cpu"), self.model.dtype)[0]

    def dpo_step(self, layout: str, batch: dict) -> float:
        """Forward + backward of the sigmoid DPO loss against a reference of zeros (untimed parts aside)."""
        import torch

        from clipdpo.train.loss import preference_loss

        sums = self.logps(layout, batch)
        n = len(sums) // 2
        zeros = torch.zeros(n)
        losses, _, _ = preference_loss(
            sums[:n], sums[n:], zeros, zeros, loss_type="sigmoid", beta=0.1, label_smoothing=0.0
        )
        losses.mean().backward()
        self.model.zero_grad(set_to_none=True)
        return float(losses.mean().detach())

    def reference_pass(self, layout: str) -> dict:
        import torch

        samples = 0
        started = time.monotonic()
        with torch.no_grad():
            for batch in self.batches[layout]:
                samples += len(self.logps(layout, batch)) // 2
        seconds = time.monotonic() - started
        return {"samples": samples, "seconds": round(seconds, 2), "samples_per_s": samples / seconds}

    def peak_bytes(self, layout: str, train: bool) -> int:
        import torch

        batch = self.batches[layout][0]
        with LiveTensorPeak() as tracker:
            if train:
                self.dpo_step(layout, batch)
            else:
                with torch.no_grad():
                    self.logps(layout, batch)
        return tracker.peak

    def with_features(self, layout: str, batch: dict) -> dict:
        import torch

        if self.features is None:
            return batch
        return self.features.attach(batch, self.layouts[layout].pair_images, torch.device("cpu"), self.model.dtype)

    def profile(self, layout: str, train: bool) -> dict:
        """Seconds per part of one training step (cached image features) or reference forward (images
        encoded), from module hooks, and the top operators (torch.profiler)."""
        import torch
        from torch.profiler import ProfilerActivity, profile

        parts = model_parts(self.model)
        seconds = dict.fromkeys(parts, 0.0)
        starts = {}

        def start(name: str) -> None:
            starts[name] = time.perf_counter()

        def stop(name: str) -> None:
            seconds[name] += time.perf_counter() - starts[name]

        hooks = []
        for name, module in parts.items():
            hooks.append(module.register_forward_pre_hook(lambda m, a, name=name: start(name)))
            hooks.append(module.register_forward_hook(lambda m, a, o, name=name: stop(name)))
        batch = self.with_features(layout, self.batches[layout][0]) if train else self.batches[layout][0]

        def once() -> None:
            if train:
                self.dpo_step(layout, batch)
            else:
                with torch.no_grad():
                    self.logps(layout, batch)

        try:
            once()  # warm
            for key in seconds:
                seconds[key] = 0.0
            started = time.perf_counter()
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                once()
            total = time.perf_counter() - started
        finally:
            for hook in hooks:
                hook.remove()
        events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
        own = sum(e.self_cpu_time_total for e in events)
        forward = sum(seconds.values())
        return {
            "seconds_profiled": round(total, 3),
            "parts_share": {k: round(v / total, 3) for k, v in seconds.items()},
            ("rest_share (loss + backward)" if train else "rest_share (log-probs, masks)"): round(
                1 - forward / total, 3
            ),
            "top_ops_self_cpu_share": {e.key: round(e.self_cpu_time_total / own, 3) for e in events[:10]},
        }


def measure_layouts(model: str, texts, batch: int, max_length: int) -> dict:
    """Reference pass, peak memory and profiles of both layouts on pre-encoded batches, and the image tokens."""
    layouts = Layouts(model, texts, batch, max_length)
    for layout in ("concatenated", "shared_prefix"):  # warm-up: lazy imports, first allocations
        layouts.dpo_step(layout, layouts.batches[layout][0])
    reference = {layout: layouts.reference_pass(layout) for layout in ("concatenated", "shared_prefix")}
    memory = {
        layout: {"train_step": layouts.peak_bytes(layout, True), "reference_forward": layouts.peak_bytes(layout, False)}
        for layout in ("concatenated", "shared_prefix")
    }
    profile = {
        f"{layout} {part}": layouts.profile(layout, part == "training step")
        for layout in ("concatenated", "shared_prefix")
        for part in ("training step", "reference forward")
    }
    return {"image_tokens": layouts.image_tokens, "reference": reference, "memory": memory, "profile": profile}


def ratios(ours: dict, reference: dict, memory: dict, peer: dict) -> dict:
    """The shared prefix against the concatenated layout and TRL, and both first runs against TRL."""
    concatenated, shared = ours["concatenated"], ours["shared_prefix"]
    return {
        "loop_speedup_vs_concatenated": shared["samples_per_s_loop"] / concatenated["samples_per_s_loop"],
        "peak_memory_ratio_vs_concatenated": (
            memory["shared_prefix"]["train_step"] / memory["concatenated"]["train_step"]
        ),
        "reference_pass_speedup_vs_concatenated": (
            reference["shared_prefix"]["samples_per_s"] / reference["concatenated"]["samples_per_s"]
        ),
        "reference_peak_memory_ratio_vs_concatenated": (
            memory["shared_prefix"]["reference_forward"] / memory["concatenated"]["reference_forward"]
        ),
        "first_run_speedup_vs_concatenated": (
            shared["samples_per_s_first_run"] / concatenated["samples_per_s_first_run"]
        ),
        "first_run_speedup_vs_trl": shared["samples_per_s_first_run"] / peer["samples_per_s"],
        "concatenated_first_run_speedup_vs_trl": concatenated["samples_per_s_first_run"] / peer["samples_per_s"],
        # CPU seconds of this process: the same ratio, less exposed to other processes on a shared machine
        "first_run_cpu_speedup_vs_trl": peer["cpu_seconds_incl_dataset"] / shared["first_run_cpu_seconds"],
        "concatenated_first_run_cpu_speedup_vs_trl": (
            peer["cpu_seconds_incl_dataset"] / concatenated["first_run_cpu_seconds"]
        ),
        "loss_max_abs_difference": max(abs(a - b) for a, b in zip(concatenated["losses"], shared["losses"])),
    }


def measure(args, work: Path) -> dict:
    from bench_train import run_trl
    from pairs_fixture import write_pairs
    from transformers import AutoTokenizer

    model, shape = build_model(args.family, str(work / f"narrow-{args.family}"), args.layers)
    tokenizer = AutoTokenizer.from_pretrained(model)
    texts = make_texts(tokenizer, args.pairs, args.seed)
    pairs = write_pairs(str(work / "data"), n_pairs=args.pairs, n_shards=2, texts=texts)
    layouts = measure_layouts(model, texts, args.batch, args.max_length)
    ours = {
        forward: run_ours(model, pairs, work, forward, args.batch, args.max_length)
        for forward in ("concatenated", "shared_prefix")
    }
    cpu_started = time.process_time()
    peer = run_trl(model, pairs, str(work / "trl"), args.batch, args.max_length, 5e-6)
    peer["cpu_seconds_incl_dataset"] = round(time.process_time() - cpu_started, 2)
    return {
        "family": args.family,
        "pairs": args.pairs,
        "batch": args.batch,
        "max_length": args.max_length,
        "seed": args.seed,
        "torch_threads": 1,
        "model": shape,
        "image_tokens": layouts["image_tokens"],
        "text_tokens": text_token_stats(tokenizer, texts),
        "clipdpo": ours,
        "reference_pass": layouts["reference"],
        "peak_memory_bytes": layouts["memory"],
        "profile": layouts["profile"],
        "trl": peer,
        **ratios(ours, layouts["reference"], layouts["memory"], peer),
    }


def table(result: dict) -> str:
    mib = lambda b: f"{b / 2**20:.0f} MiB"  # noqa: E731
    ours, ref, mem, trl = result["clipdpo"], result["reference_pass"], result["peak_memory_bytes"], result["trl"]
    lines = ["| variant | samples/s | peak memory (one step) |", "|---|---|---|"]
    for forward in ("concatenated", "shared_prefix"):
        lines += [
            f"| clipdpo {forward}, training loop | {ours[forward]['samples_per_s_loop']:.2f} | "
            f"{mib(mem[forward]['train_step'])} |",
            f"| clipdpo {forward}, reference pass | {ref[forward]['samples_per_s']:.2f} | "
            f"{mib(mem[forward]['reference_forward'])} |",
            f"| clipdpo {forward}, first run (index + reference + loop + save) | "
            f"{ours[forward]['samples_per_s_first_run']:.2f} | |",
        ]
    lines += [
        f"| TRL DPOTrainer.train() | {trl['samples_per_s']:.2f} | |",
        f"| TRL incl. dataset preparation | {trl['samples_per_s_total']:.2f} | |",
    ]
    keys = (
        "loop_speedup_vs_concatenated",
        "peak_memory_ratio_vs_concatenated",
        "reference_pass_speedup_vs_concatenated",
        "first_run_speedup_vs_concatenated",
        "first_run_speedup_vs_trl",
        "concatenated_first_run_speedup_vs_trl",
        "first_run_cpu_speedup_vs_trl",
        "concatenated_first_run_cpu_speedup_vs_trl",
    )
    lines += [f"{key}: {result[key]:.2f}" for key in keys]
    lines += [
        f"images encoded / reused, {forward} first run: {ours[forward]['image_features'].get('encoded', '-')} / "
        f"{ours[forward]['image_features'].get('reused', '-')}"
        for forward in ("concatenated", "shared_prefix")
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--family",
        choices=FAMILIES,
        default="llava",
        help="whose shapes: LLaVA-1.5's (576 image tokens) or Qwen2.5-VL-7B's (448x448 images: 256 tokens, M-RoPE)",
    )
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=16)
    parser.add_argument(
        "--layers",
        type=int,
        default=2,
        help="language-model layers (2: the issue's narrow model; more shows how the last layer's "
        "saving at prefix positions, ~1/layers of the work, thins out with depth)",
    )
    parser.add_argument("--json", action="store_true", help="print the result as one JSON line, last")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import torch

    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="clipdpo-bench-prefix-"))
    try:
        result = measure(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out = ROOT / "bench-results"
    out.mkdir(exist_ok=True)
    # the LLaVA bench keeps its file's name; another family's results sit beside it
    name = "prefix.json" if args.family == "llava" else f"prefix-{args.family}.json"
    (out / name).write_text(json.dumps(result, indent=2))
    print(table(result))
    print("profiles:", json.dumps(result["profile"], indent=1))
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
