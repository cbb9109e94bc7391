"""Run the pipeline's stages on a built world in this process (clipdpo_lab.localrun) and read back base vs
trained metrics: for measurements (`python -m clipdpo_lab measure`) and the slow tests; `make pipeline-run`
runs the kfp pipeline itself with the world's configs."""

from __future__ import annotations

import time

from clipdpo_lab import localrun
from clipdpo_world.build import WorldPaths


def run_stages(paths: WorldPaths, run_root: str, overrides: dict[str, dict] | None = None, say=print) -> dict:
    """Every stage on the world (configs from `paths.configs`, `overrides` merged per stage); returns the
    evaluation's metrics.json (`results.<model>.amber...`) plus the stages' times."""
    configs = {stage: {**body, **(overrides or {}).get(stage, {})} for stage, body in paths.configs.items()}
    seconds = localrun.run_stages(configs, run_root, paths.images, say)
    started = time.monotonic()
    models = [localrun.hf_model("base", paths.lvlm), localrun.hf_model("clipdpo", localrun.model_uri(run_root))]
    metrics = localrun.evaluate(run_root, configs["evaluate"], models, configs["train"])
    seconds["evaluate"] = round(time.monotonic() - started, 1)
    say(f"  evaluate: {seconds['evaluate']:.0f}s")
    return {"metrics": metrics, "seconds": seconds}


def summary(metrics: dict) -> dict[str, dict]:
    """model -> the headline numbers (CHAIR, Hal, Cover, Cog, F1, AMBER score)."""
    out = {}
    for name, result in metrics["results"].items():
        amber = result.get("amber", {})
        generative = amber.get("generative", {})
        out[name] = {
            "chair": generative.get("chair"),
            "hal": generative.get("hal"),
            "cover": generative.get("cover"),
            "cog": generative.get("cog"),
            "f1": amber.get("discriminative", {}).get("f1"),
            "amber_score": amber.get("amber_score"),
        }
    return out


def run_control(paths: WorldPaths, run_root: str, seed: int = 0) -> dict:
    """The control arm on `run_root`'s scores (localrun.control_arm), evaluated base vs "control" under
    `<run_root>-control`; returns its metrics.json."""
    control = localrun.arm_root(run_root, "control")
    localrun.control_arm(paths.configs, paths.configs["train"], run_root, seed=seed, say=lambda line: None)
    models = [localrun.hf_model("base", paths.lvlm), localrun.hf_model("control", localrun.model_uri(control))]
    return localrun.evaluate(control, paths.configs["evaluate"], models, paths.configs["train"])


def sampled_metrics(model_dir: str, scenes: list, samples: int = 3) -> dict:
    """Exact CHAIR/Hal/Cover of sampled captions (temperature 1.0, `samples` per image), mean over samples:
    steadier than greedy on a few hundred images."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from clipdpo_world import lvlm, metrics

    model = AutoModelForImageTextToText.from_pretrained(model_dir).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    runs = [
        metrics.caption_metrics(scenes, lvlm.describe(model, processor, scenes, temperature=1.0, seed=seed))
        for seed in range(samples)
    ]
    return {key: round(sum(getattr(r, key) for r in runs) / samples, 2) for key in ("chair", "hal", "cover")}


def answer_accuracy(model_dir: str, questions: list, batch: int = 64) -> dict:
    """Forced-choice accuracy (%) on `questions` ((scene, QAItem) pairs, e.g. qatruth.heldout_questions): the
    share whose right answer the model gives a higher log-probability than the wrong one, overall and by the
    right answer's kind ("yes", "no", "attribute": colour, count or position). Exact from the world's truth, and
    no sampling noise; the answers are scored in the chat layout the train step uses (lvlm.prompt_ids)."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(model_dir).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    sequences = [(scene, item.question, answer) for scene, item in questions for answer in (item.correct, item.wrong)]
    with torch.no_grad():
        scores = [
            value
            for start in range(0, len(sequences), batch)
            for value in _answer_logprobs(model, processor, sequences[start : start + batch])
        ]
    right = [a > b for a, b in zip(scores[0::2], scores[1::2])]
    kinds = [_answer_kind(item.correct) for _, item in questions]
    out = {"all": _percent(right)}
    for kind in ("yes", "no", "attribute"):
        out[kind] = _percent([ok for ok, k in zip(right, kinds) if k == kind])
    return out


def _answer_kind(answer: str) -> str:
    return answer.lower() if answer.lower() in ("yes", "no") else "attribute"


def _percent(values: list[bool]) -> float | None:
    return round(100 * sum(values) / len(values), 1) if values else None


def _answer_logprobs(model, processor, sequences: list) -> list[float]:
    """Sum of the answer tokens' log-probabilities (its end token included) per (scene, question, answer)."""
    import torch

    from clipdpo_world import lvlm
    from clipdpo_world.scene import render

    prompt_of = {question: lvlm.prompt_ids(processor, question) for question in {q for _, q, _ in sequences}}
    answer_of = {answer: lvlm.answer_ids(processor, answer) for answer in {a for _, _, a in sequences}}
    prompts = [prompt_of[question] for _, question, _ in sequences]
    answers = [answer_of[answer] for _, _, answer in sequences]
    width = max(len(p) + len(a) for p, a in zip(prompts, answers))
    pad = processor.tokenizer.pad_token_id
    input_ids = torch.full((len(sequences), width), pad)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, (p, a) in enumerate(zip(prompts, answers)):
        input_ids[row, : len(p) + len(a)] = torch.tensor(p + a)
        mask[row, : len(p) + len(a)] = 1
    pixels = processor.image_processor([render(scene) for scene, _, _ in sequences], return_tensors="pt")
    logits = model(input_ids=input_ids, attention_mask=mask, pixel_values=pixels["pixel_values"]).logits
    logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    token = logprobs.gather(-1, input_ids[:, 1:, None])[..., 0]
    out = []
    for row, (p, a) in enumerate(zip(prompts, answers)):
        out.append(float(token[row, len(p) - 1 : len(p) + len(a) - 1].sum()))
    return out
