"""Train, check and cache the world QA writer (`qawriter`) as an add-on of a built world.

`ensure(world_root)` returns `<world root>/qa-writer-<key>/`, training the writer there first when it is
missing: built under `<name>.partial` and renamed, `writer.json` written last, so a crash leaves nothing that
passes for a finished writer and a world's own files are never touched. The key hashes `qawriter.py`, this
module, the writer's config and what it reads of the worlds (the scene config and the code that draws and words
scenes): not the world's seed, so one trained writer serves every world seed (`QAWriterConfig.source_world`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from clipdpo.generate.qa_parse import parse_qa
from clipdpo_world import data, lvlm, qawriter
from clipdpo_world.clip import WorldBuildError
from clipdpo_world.qawriter import QAWriterConfig
from clipdpo_world.scene import Scene, SceneConfig

WRITER_FILE = "writer.json"  # written last: marks a finished writer
MODULES = ("qawriter.py", "qawriter_build.py")
SCENE_MODULES = ("scene.py", "language.py", "data.py")
WORLD_FILE = "world.json"  # build.WORLD_FILE (not imported: build imports the stage configs, which import this)
DEFAULT = QAWriterConfig()  # the config stage_configs' writer is made with (a slow test swaps in a tiny one)


def scenes_key(seed: int, scene: dict) -> str:
    """What the writer learns from: world seed `seed`'s scenes (scene config, and the code that draws and words
    them). Not a world's whole key: a changed CLIP or LLaVA leaves the writer as it was."""
    digest = hashlib.sha256(json.dumps({"seed": seed, "scene": scene}, sort_keys=True).encode())
    for name in SCENE_MODULES:
        digest.update(name.encode() + Path(__file__).with_name(name).read_bytes())
    return digest.hexdigest()[:16]


def writer_key(scenes: str, cfg: QAWriterConfig) -> str:
    """The writer's cache key: `scenes` (scenes_key) and its own config and code."""
    digest = hashlib.sha256(json.dumps({"world": scenes, "config": asdict(cfg)}, sort_keys=True).encode())
    for name in MODULES:
        digest.update(name.encode() + Path(__file__).with_name(name).read_bytes())
    return digest.hexdigest()[:16]


def build_model(scenes: list[Scene], cfg: QAWriterConfig):
    """A small LlamaForCausalLM and a tokenizer of the world's language (the world LVLM's tokenizer builder)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    rng = np.random.default_rng(cfg.seed)
    corpus = [text for scene in scenes[:500] for text in qawriter.example(scene, rng, cfg)]
    tokenizer = lvlm.build_tokenizer(corpus, cfg.vocab_size)
    torch.manual_seed(cfg.seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden,
        intermediate_size=2 * cfg.hidden,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        num_key_value_heads=cfg.heads,
        max_position_embeddings=1024,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=cfg.tie_embeddings,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def chat_text(tokenizer, prompt: str) -> str:
    """The user turn and the generation prompt, as the hf engine's chat() renders a text-only prompt."""
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
    )


def batch(scenes: list[Scene], tokenizer, rng: np.random.Generator, cfg: QAWriterConfig) -> dict[str, torch.Tensor]:
    """Fresh examples of random training scenes; loss on the reply only (right-padded)."""
    picked = [scenes[int(i)] for i in rng.integers(len(scenes), size=cfg.batch_size)]
    pairs = [qawriter.example(scene, rng, cfg) for scene in picked]
    prompts = tokenizer([chat_text(tokenizer, p) for p, _ in pairs], add_special_tokens=False)["input_ids"]
    # lvlm.answer_ids' rule: the byte-level pre-tokenizer splits at spaces, so " reply</s>" encodes apart.
    replies = tokenizer([" " + r + tokenizer.eos_token for _, r in pairs], add_special_tokens=False)["input_ids"]
    width = max(len(p) + len(r) for p, r in zip(prompts, replies))
    input_ids = torch.full((len(pairs), width), tokenizer.pad_token_id)
    labels = torch.full((len(pairs), width), -100)
    mask = torch.zeros((len(pairs), width), dtype=torch.long)
    for row, (p, r) in enumerate(zip(prompts, replies)):
        input_ids[row, : len(p) + len(r)] = torch.tensor(p + r)
        labels[row, len(p) : len(p) + len(r)] = torch.tensor(r)
        mask[row, : len(p) + len(r)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def train(model, tokenizer, scenes: list[Scene], cfg: QAWriterConfig, say=print) -> list[float]:
    """AdamW with the world LVLM's schedule (warm-up, cosine to 10%: lvlm._lr); returns the loss curve (the mean
    training loss of every 100 steps) and leaves the model in eval mode."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=0.0)
    rng = np.random.default_rng(cfg.seed + 1)
    started = time.monotonic()
    curve, window = [], []
    model.train()
    for step in range(cfg.steps):
        for group in optimizer.param_groups:
            group["lr"] = lvlm._lr(step, cfg)
        loss = model(**batch(scenes, tokenizer, rng, cfg)).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        window.append(loss.item())
        if (step + 1) % 100 == 0 or step + 1 == cfg.steps:
            curve.append(round(sum(window) / len(window), 4))
            window = []
            say(
                f"  world QA writer step {step + 1}/{cfg.steps} loss {curve[-1]:.3f} "
                f"({time.monotonic() - started:.0f}s)"
            )
    model.eval()
    return curve


@torch.no_grad()
def write(model, tokenizer, prompts: list[str], max_new_tokens: int = 96, batch_size: int = 32) -> list[str]:
    """Greedy replies to `prompts` (the self-check's decoding)."""
    tokenizer.padding_side = "left"
    # (a type comment, not an annotation: the QA writer's key hashes this module's syntax tree)
    out = []  # type: list[str]
    for start in range(0, len(prompts), batch_size):
        inputs = tokenizer(
            [chat_text(tokenizer, p) for p in prompts[start : start + batch_size]],
            return_tensors="pt",
            padding=True,
            add_special_tokens=False,
        )
        generated = model.generate(
            **inputs, do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id
        )
        out.extend(
            t.strip()
            for t in tokenizer.batch_decode(generated[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        )
    tokenizer.padding_side = "right"
    return out


def question_type(item) -> str:
    """ "existence-yes" / "existence-no" (by the correct answer), "colour", "count", "position" or "other"."""
    words = item.question.split()
    kind = {"Is": "existence", "What": "colour", "How": "count", "Where": "position"}.get(words[0] if words else "")
    if kind == "existence":
        return "existence-no" if item.correct.strip().lower().startswith("no") else "existence-yes"
    return kind or "other"


def score_replies(scenes: list[Scene], replies: list[str], n: int, targets: list[str] | None = None) -> dict:
    """Of the n questions asked per scene: the share parsed, the share parsed and right by the truth, right/parsed
    by question type; with `targets`, the share of replies equal to the rule's reply (how much of the rule the
    writer learnt: a reply can differ from the rule and still be right)."""
    parsed = right = 0
    by_type: dict[str, list[int]] = {}
    for scene, text in zip(scenes, replies):
        items = parse_qa(text, n).items
        parsed += len(items)
        for item in items:
            ok = qawriter.is_right(scene, item)
            right += ok
            by_type.setdefault(question_type(item), [0, 0])[0] += ok
            by_type[question_type(item)][1] += 1
    asked = n * len(scenes)
    out = {
        "asked": asked,
        "parsed": round(parsed / asked, 4),
        "right": round(right / asked, 4),
        "by_type": {k: f"{r}/{m}" for k, (r, m) in sorted(by_type.items())},
    }
    if targets is not None:
        out["as_rule"] = round(sum(r.strip() == t.strip() for r, t in zip(replies, targets)) / len(scenes), 4)
    return out


def check(model, tokenizer, scenes: list[Scene], cfg: QAWriterConfig) -> dict:
    """The writer's replies on held-out scenes' noisy captions, scored by their ground truth."""
    rng = np.random.default_rng(cfg.seed + 2)
    prompts, targets = zip(*(qawriter.example(scene, rng, cfg) for scene in scenes))
    return score_replies(scenes, write(model, tokenizer, list(prompts)), cfg.questions, list(targets))


def _world_record(world_root: Path) -> dict:
    path = world_root / WORLD_FILE
    record = json.loads(path.read_text())
    if not {"key", "config"} <= set(record):
        raise WorldBuildError(f"{path}: a built world's record holds 'key' and 'config'; got {sorted(record)}")
    return record


def ensure(world_root: str, cfg: QAWriterConfig | None = None, say=print) -> str:
    """`<world_root>/qa-writer-<key>/` (config `cfg`, else DEFAULT), trained first when missing (or moved in from
    where `stage` trained it beside the world while the world was built); refuses a writer whose held-out
    questions are right less than `cfg.min_right` of the time (WorldBuildError)."""
    cfg = cfg or DEFAULT
    root = Path(world_root)
    record = _world_record(root)
    scene = record["config"]["scene"]
    key = writer_key(scenes_key(cfg.source_world, scene), cfg)
    target = root / f"qa-writer-{key}"
    staged = staged_path(root.parent, key)
    if not (target / WRITER_FILE).exists() and (staged / WRITER_FILE).exists():
        partial = root / (target.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        shutil.copytree(staged, partial)  # copied: every other world (seed, LLaVA) may want it too
        shutil.rmtree(target, ignore_errors=True)
        os.replace(partial, target)
    if not (target / WRITER_FILE).exists():
        train_into(target, SceneConfig(**scene), cfg, say)
    return str(target)


def staged_path(cache_dir: Path, key: str) -> Path:
    """Where `stage` trains a writer before its world is built (beside the worlds, by the writer's key)."""
    return Path(cache_dir) / f"qa-writer-{key}.staged"


def stage(cache_dir: str, scene: dict, cfg: QAWriterConfig | None = None, say=print) -> str:
    """Train the writer (`cfg`, else DEFAULT) of worlds with scene config `scene` beside the worlds, so it can
    train in another process while a world builds (it reads only scenes); `ensure` copies it in."""
    cfg = cfg or DEFAULT
    target = staged_path(Path(cache_dir), writer_key(scenes_key(cfg.source_world, scene), cfg))
    if not (target / WRITER_FILE).exists():
        train_into(target, SceneConfig(**scene), cfg, say)
    return str(target)


def train_into(target: Path, scene_cfg: SceneConfig, cfg: QAWriterConfig, say) -> None:
    """Train and check the writer on world `cfg.source_world`'s scenes, saved as `target` (built under `.partial`,
    `writer.json` last)."""
    seed = cfg.source_world
    scenes = scenes_key(seed, asdict(scene_cfg))
    cfg = replace(cfg, seed=cfg.seed + 1000 * seed)
    started = time.monotonic()
    say(f"world QA writer: training {target.name} ...")
    train_scenes = data.scenes(seed, "train", cfg.train_scenes, scene_cfg)
    model, tokenizer = build_model(train_scenes, cfg)
    curve = train(model, tokenizer, train_scenes, cfg, say)
    measured = check(model, tokenizer, data.scenes(seed, "heldout", cfg.check_scenes, scene_cfg), cfg)
    say(f"world QA writer ({time.monotonic() - started:.0f}s): held-out questions {measured}")
    if measured["right"] < cfg.min_right:
        raise WorldBuildError(
            f"world QA writer: {100 * measured['right']:.1f}% of held-out questions parse and "
            f"are right, below the {100 * cfg.min_right:.0f}% required (QAWriterConfig)"
        )
    partial = target.parent / (target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    (partial / WRITER_FILE).write_text(
        json.dumps(
            {
                "config": asdict(cfg),
                "scenes": scenes,
                "check": measured,
                "loss_every_100_steps": curve,
                "seconds": round(time.monotonic() - started, 1),
            },
            indent=2,
        )
    )
    shutil.rmtree(target, ignore_errors=True)
    os.replace(partial, target)
