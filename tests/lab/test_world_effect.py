"""The world's claim, small enough for `make test`: on a world built here, CLIP-DPO cuts hallucination against
both the base LVLM and the shuffled-score control, through the real stages.

World: `smalleffect.small_world(0)`, built in tmp_path with its self-checks at their default bars (CLIP ranks
>= 90%, base greedy Cover >= 90%). Stages, in this process: ingest -> generate (the base LVLM's sampled
captions) -> score (world CLIP) -> filter (the paper's rules) -> DPO train; the control arm: the same scores
shuffled within each image -> filter -> train. Measurement: the world's exact CHAIR/Hal/Cover of sampled
captions (temperature 1.0, SAMPLES per held-out image, the same sampling seeds for every model), not the
evaluate stage's spaCy AMBER on greedy captions (slower, and noisier on few images).
Cost: 303 CPU-seconds on one thread (measured: build ~210 s, stages ~50 s, measurement ~30 s), so about 5
minutes on an idle core; 26 minutes of wall time on the 2 shared cores under load 8-20 where it was measured.
The second test guards the paper's QA path on the same world and run (a module fixture builds and trains once):
QA pairs must teach held-out answers, so reversed ones fail; it adds 13.5 CPU-seconds (measured).
"""

from types import SimpleNamespace

import pytest

SAMPLES = 10  # sampled descriptions per held-out image and model: 3,000 captions each

# The margin. Measured with this config, 300 held-out images x 10 samples. World 0 (this test): base CHAIR
# 10.13 / Hal 28.17 / Cover 93.6, CLIP-DPO 5.96 / 16.40 / 92.9, control 9.92 / 27.57 / 93.2, so CLIP-DPO / base
# 0.59 / 0.58 and CLIP-DPO / control 0.60 / 0.59. World 1: base 13.93 / 35.87, CLIP-DPO 10.00 / 25.33, control
# 14.22 / 37.40: 0.72 / 0.71 and 0.70 / 0.68. What it must tell apart: random pairs (the control) gave control /
# base CHAIR 0.94-1.14 over seven control trainings; on world 0 (1,200 SFT steps), chosen/rejected swapped in
# the filter gave CLIP-DPO / base CHAIR 1.79, Hal 1.71; a scorer of random values 1.03 / 1.05; mirrored scores
# (180 - score) 1.85 / 1.80. RATIO 0.83 is the middle of the gap between the weakest effect (0.72, world 1)
# and the lowest null (0.94): 0.24 above this world's 0.59, 0.11 below any null. Noise: one model's CHAIR
# varies by 5-9% (sd) between sampling seeds, its mean over 10 seeds by 2-3%, a ratio of two by ~4% (0.02-0.04).
# Another world seed changes the world wholesale and moved the ratio by 0.13, which still passes. So does another
# CPU vendor (MKL honours its AVX2 pin on Intel only): on a 2-core AMD EPYC, world 0 here gave base CHAIR 11.25,
# CLIP-DPO 8.64, control 11.88: 0.77 of base, 0.73 of control (0.79 for Hal), the closest to RATIO measured.
RATIO = 0.83
# the paper's DPO objective (no RPO term): the claim here is about the pairs CLIP ranks, against the control's
PAPER_TRAIN = {"rpo_alpha": 0.0}
# A model that stops naming objects would hallucinate less too: it must still describe the image (Cover moved
# by 0.7 points under CLIP-DPO, 2.7 with the swapped filter).
COVER_DROP = 5.0

# The QA pairs' guard (test_qa_pairs_teach_the_right_answers_on_the_same_world). Measured on world 0: forced-choice
# accuracy (%) on the 308 attribute questions (colour, count, one position) of 600 held-out questions, base 56.2. QA arm
# (333 pairs: 237 attribute, 48 + 48 yes/no) with QA_EPOCHS, three training seeds: 71.1 / 70.1 / 69.2 (gain 13.0-14.9).
# What it must tell apart: the QA pairs reversed in the filter (right answer as rejected) gave 42.9 / 41.2 on two seeds
# (-13.3 / -15.0); pairs whose answers a coin put either way gave 56.5 / 58.8 / 57.5 (+0.3 to +2.6). QA_GAIN 8 is the
# middle of the gap between the weakest effect (+13.0) and the highest null (+2.6): 5 points from either, 21 above the
# reversal. Noise: one model's accuracy is exact (no sampling); between training seeds it moved by ~1 point (sd), and
# the 308 questions put a binomial ~2.6 points on each model's share. Another world seed was not measured.
QA_GAIN = 8.0
# The world's 2 epochs over ~330 QA pairs are ~40 DPO steps: the gain was 7.4-11.7 on three seeds against a coin's
# up to +4.2, too close; 4 epochs doubled the gap (the test's 13.5 CPU-seconds were measured with them).
QA_EPOCHS = 4


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread: a busy second core slows two threads ~10x, and the time budget assumes one."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def small(tmp_path_factory, one_thread):
    """The world built and its arms trained once for both tests of this module (tests/conftest.py keeps them on
    one worker): the build is ~210 of the ~300 CPU-seconds."""
    from clipdpo_lab.smalleffect import small_world, train_arms
    from clipdpo_world import data
    from clipdpo_world.build import build

    root = tmp_path_factory.mktemp("small-effect")
    cfg = small_world(seed=0)
    paths = build(cfg, str(root / "world"), say=print)  # raises WorldBuildError on a CLIP or LVLM that fails
    run_root = str(root / "run")
    models = train_arms(paths, run_root, overrides={"train": PAPER_TRAIN}, say=print)
    heldout = data.scenes(cfg.seed, "heldout", cfg.heldout_images)
    return SimpleNamespace(paths=paths, run_root=run_root, models=models, heldout=heldout)


@pytest.mark.slow(seconds=300)  # the longest test: xdist starts it first (tests/conftest.py)
def test_clipdpo_cuts_hallucination_against_base_and_control_on_a_small_world(small):
    from clipdpo_lab.effect import sampled_metrics

    got = {name: sampled_metrics(path, small.heldout, samples=SAMPLES) for name, path in small.models.items()}
    print("sampled, exact world metrics:", got)
    for metric in ("chair", "hal"):
        for other in ("base", "control"):
            assert got["clipdpo"][metric] <= RATIO * got[other][metric], (
                f"CLIP-DPO {metric} {got['clipdpo'][metric]} is not below {RATIO} x {other}'s "
                f"{got[other][metric]}: {got}"
            )
    assert got["clipdpo"]["cover"] >= got["base"]["cover"] - COVER_DROP, got


@pytest.mark.slow(seconds=15)
def test_qa_pairs_teach_the_right_answers_on_the_same_world(small):
    """The paper's QA path on the same world: QA rows from the CLIP-DPO run's captions, the real score, filter
    (check captions, the yes/no balance, kind "qa": right answer chosen) and train steps, in an arm of QA pairs
    alone; its trained model must answer held-out questions better than the base, so QA pairs reversed (the
    right answer as rejected) fail.

    The QA writer is the world's ground-truth stand-in (clipdpo_world.qatruth): the writer's rule answered by the
    scene's truth. The trained world writer takes 8-15 CPU-minutes, and its 70-85% right answers would make the
    test measure the writer too. Measure: forced-choice accuracy (right answer's log-probability above the wrong
    one's), exact from the truth, on the QA pairs' question forms over the held-out images. The assertion reads
    the attribute questions (colour, count, position): this world's LVLM was trained with no Yes/No questions (POPE 50%,
    AMBER F1 0), prefers "Yes" whatever the image (right on 6.5% of the "No" questions), and 96 yes/no pairs do
    not teach it to look (8-20% after them); the accuracies of both are printed.
    Cost: 13.5 CPU-seconds measured (QA rows, score, filter, train, and 600 questions x 2 answers x 2 models)."""
    from clipdpo_lab.effect import answer_accuracy
    from clipdpo_lab.smalleffect import qa_arm, stage_configs
    from clipdpo_world.qatruth import heldout_questions

    questions = heldout_questions(small.heldout)
    configs = stage_configs(small.paths, {"train": {**PAPER_TRAIN, "epochs": QA_EPOCHS}})
    qa_model = qa_arm(small.paths, configs, small.run_root, say=print)
    got = {"base": answer_accuracy(small.paths.lvlm, questions), "qa": answer_accuracy(qa_model, questions)}
    print("forced-choice accuracy (%) on held-out questions:", got)
    assert got["qa"]["attribute"] >= got["base"]["attribute"] + QA_GAIN, got
