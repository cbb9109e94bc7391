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
"""

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
# A different CPU changes the world's training in its last bits; another world seed changes it wholesale and
# moved the ratio by 0.13, which still passes.
RATIO = 0.83
# A model that stops naming objects would hallucinate less too: it must still describe the image (Cover moved
# by 0.7 points under CLIP-DPO, 2.7 with the swapped filter).
COVER_DROP = 5.0


@pytest.fixture
def one_thread():
    """One torch thread: a busy second core slows two threads ~10x, and the time budget assumes one."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.slow(seconds=300)  # the longest test: xdist starts it first (tests/conftest.py)
def test_clipdpo_cuts_hallucination_against_base_and_control_on_a_small_world(tmp_path, one_thread):
    from clipdpo_lab.effect import sampled_metrics
    from clipdpo_lab.smalleffect import small_world, train_arms
    from clipdpo_world import data
    from clipdpo_world.build import build

    cfg = small_world(seed=0)
    paths = build(cfg, str(tmp_path / "world"), say=print)  # raises WorldBuildError on a CLIP or LVLM that fails
    # the paper's DPO objective (no RPO term): the claim here is about the pairs CLIP ranks, against the control's
    paper = {"train": {"rpo_alpha": 0.0}}
    models = train_arms(paths, str(tmp_path / "run"), overrides=paper, say=print)
    heldout = data.scenes(cfg.seed, "heldout", cfg.heldout_images)
    got = {name: sampled_metrics(path, heldout, samples=SAMPLES) for name, path in models.items()}
    print("sampled, exact world metrics:", got)
    for metric in ("chair", "hal"):
        for other in ("base", "control"):
            assert got["clipdpo"][metric] <= RATIO * got[other][metric], (
                f"CLIP-DPO {metric} {got['clipdpo'][metric]} is not below {RATIO} x {other}'s "
                f"{got[other][metric]}: {got}"
            )
    assert got["clipdpo"]["cover"] >= got["base"]["cover"] - COVER_DROP, got
