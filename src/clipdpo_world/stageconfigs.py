"""The pipeline's stage configs for a built world (ingest ... evaluate): the paper's rules, the world's models.

Apart from the build: changing how a run uses the world does not rebuild the world.
"""

from __future__ import annotations

import copy

from clipdpo_world import clip, language

# AMBER's descriptions on the world are sampled, not greedy (greedy counts moved a lot from world to world): the
# model's own distribution
# (temperature 1.0, as the generate stage samples its captions) drawn 3 times for each of the 300 held-out
# images, so CHAIR/Hal are counted over 900 descriptions instead of 300 greedy ones, whose hallucination
# count (a few dozen captions) moved a lot from world to world. Chosen by design, before any number.
EVAL_DECODING = {"temperature": 1.0, "top_p": 1.0, "samples": 3, "seed": 0}


# The world QA writer's decoding: the paper's sampling for its LLM (QAConfig's temperature 0.7, top-p 0.9);
# two blocks take ~40 tokens, 96 leaves room without letting a runaway reply run long on a CPU.
QA_SAMPLING = {"temperature": 0.7, "top_p": 0.9, "max_new_tokens": 96}


def world_qa_config(world_root: str, say=print) -> dict:
    """The generate stage's QA config on a built world: the paper's QA path (questions, check captions, QA pairs)
    with the world's QA writer, trained on first use as an add-on of the world (`qawriter_build.ensure`, which
    refuses a writer below its self-check's bar). The lab's run sets it (`clipdpo_lab run`, unless --no-qa)."""
    from clipdpo_world import qawriter, qawriter_build

    writer = qawriter_build.ensure(world_root, say=say)
    return {
        "enabled": True,
        "model": {"name": "world-qa-writer", "path": writer, "engine": "hf", "dtype": "float32"},
        "questions_per_image": qawriter_build.DEFAULT.questions,
        "sampling": dict(QA_SAMPLING),
        "prompt_template": qawriter.PROMPT_TEMPLATE,
    }


def stage_configs(
    paths: dict, bench: dict, seed: int, samples_per_image: int, spacy_model: str | None
) -> dict[str, dict]:
    """The pipeline's stage configs for this world: the paper's rules, the world's models."""
    clip_cfg = clip.scorer_config(paths["clip"])
    evaluate = {"engine": "hf", "max_new_tokens": 48, **bench}
    evaluate["zero_shot"] = {**bench["zero_shot"], "text_encoder": clip_cfg}
    evaluate["amber"] = {**bench["amber"], "decoding": dict(EVAL_DECODING)}
    if spacy_model:
        evaluate["amber"]["nlp"] = {"backend": "spacy", "spacy_model": spacy_model}
    return {
        "ingest": {"source": paths["images"], "source_name": f"world{seed}", "shard_size": 250},
        "generate": {
            "captioners": [{"name": "world-lvlm", "path": paths["lvlm"], "engine": "hf", "dtype": "float32"}],
            "prompts": list(language.CAPTION_PROMPTS[:5]),
            "captions_per_model": samples_per_image,
            "sampling": {"temperature": 1.0, "top_p": 1.0, "max_new_tokens": 48},
            "batch_size": 32,
            "qa": {"enabled": False},  # the lab's run turns it on: world_qa_config (clipdpo_lab run, unless --no-qa)
        },
        "score": {**clip_cfg, "categories": language.category_descriptions()},
        "filter": {},  # the paper's rules (margin 2.0, length ratio 0.75, text down-sampling 0.5)
        # lr: 2e-4 made the DPO model degenerate on world 0 (repeated phrases; greedy CHAIR 3.3 -> 9.8, Cover
        # 97 -> 87): DPO too strong for a model this small; 5e-5 did not.
        "train": {
            "model": paths["lvlm"],
            "learning_rate": 5e-5,
            "epochs": 2,
            "beta": 0.1,
            "global_batch_size": 16,
            "per_device_batch_size": 16,
            "max_length": 128,
            "save_steps": 1000,
            # The paper's DPO (no RPO NLL term): chosen by measurement on worlds 0-2 with the QA pairs balanced
            # between yes and no (filter.qa_yes_no_max_ratio); RPO alpha 0.3 / 1 kept a fifth / a tenth of the
            # CHAIR cut and no report warned that chosen log-probs fell (docs/world.md, "The default recipe")
            "rpo_alpha": 0.0,
        },
        "evaluate": evaluate,
    }


# POVID's training on the world: the paper's schedule and Table 5, scaled as the CLIP-DPO arm is. The paper's
# stage 1 (text dispreferences, 3 epochs) then stage 2 (Eq. 5 with noisy-image rejections, 1 epoch), noise step
# 500 (Table 5). Its learning rate 1e-7 (LoRA r128 on LLaVA-1.5 7B) gets the factor that turned CLIP-DPO's 5e-7
# into the world's 5e-5 (x100, full fine-tuning of the small Llama): 1e-5. Batch 16 as the CLIP-DPO arm (the
# paper's batch 1 is a memory limit of one A100). alpha, beta_1, beta_2: 0.1 each (the paper gives no values;
# DPO's beta). `both` trains the union of CLIP-DPO's and POVID's pairs with the same two-stage schedule.
POVID_TRAIN = {
    "reference": "model",
    "rpo_alpha": 0.0,  # POVID's own objective (Eq. 5), without the CLIP-DPO arm's NLL term
    "epochs": 1,
    "learning_rate": 1e-5,
    "povid": {
        "stage1_epochs": 3,
        "stage2_epochs": 1,
        "noise_step": 500,
        "noisy_every": 1,
        "alpha": 0.1,
        "beta_1": 0.1,
        "beta_2": 0.1,
    },
    "save_steps": 50,
}  # checkpoints: a run cut by a time limit resumes (not part of the fingerprint)
METHODS = ("clipdpo", "povid", "both")


def method_train_config(train: dict, method: str) -> dict:
    """The world's train config (the CLIP-DPO arm's) for `method`."""
    if method not in METHODS:
        raise ValueError(f"method {method!r}: expected one of {METHODS}")
    return dict(train) if method == "clipdpo" else {**train, **copy.deepcopy(POVID_TRAIN), "method": method}


def povid_source_config(images: str, seed: int) -> dict:
    """The POVID source on the world: its rule-based stand-in for the LLM, ground truth from the pool's truth.jsonl."""
    return {"source": "plugin", "rewriter": "clipdpo_world.povid_source:rewriter", "ground_truth": images, "seed": seed}
