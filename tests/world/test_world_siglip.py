"""The world SigLIP: SigLIP's loss and model config on the world CLIP's tower, cached beside a world by its own key."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import torch


def test_sigmoid_loss_matches_a_value_worked_by_hand():
    """Orthogonal unit features, t = 2, b = -1: every logit z (t cos + b) is +1 (matches: 2 - 1; others: -(0 - 1)),
    so the loss is -4 log sigmoid(1) / 2 = 2 log(1 + e^-1)."""
    from clipdpo_world.siglip import sigmoid_loss

    eye = torch.eye(2)
    loss = sigmoid_loss(eye, eye, torch.tensor(2.0), torch.tensor(-1.0))
    assert loss.item() == pytest.approx(2 * math.log(1 + math.exp(-1)), rel=1e-6)
    # a mismatched batch (texts swapped) is penalised: every z is -1
    swapped = sigmoid_loss(eye, eye.flip(0), torch.tensor(2.0), torch.tensor(-1.0))
    assert swapped.item() == pytest.approx(2 * math.log(1 + math.e), rel=1e-6)


def test_sigmoid_loss_is_open_clips_siglip_loss():
    from open_clip.loss import SigLipLoss

    from clipdpo_world.siglip import sigmoid_loss

    generator = torch.Generator().manual_seed(0)
    images = torch.nn.functional.normalize(torch.randn(5, 8, generator=generator), dim=1)
    texts = torch.nn.functional.normalize(torch.randn(5, 8, generator=generator), dim=1)
    scale, bias = torch.tensor(10.0), torch.tensor(-10.0)
    expected = SigLipLoss()(images, texts, scale, bias)
    torch.testing.assert_close(sigmoid_loss(images, texts, scale, bias), expected)


def tiny_siglip():
    from clipdpo_world.clip import ClipConfig
    from clipdpo_world.siglip import SiglipConfig

    return SiglipConfig(tower=ClipConfig(steps=3, batch_size=8, warmup_steps=1, min_pairwise_accuracy=0.0))


def test_the_score_stage_judges_the_world_siglip_on_its_own_logit(tmp_path):
    """Its model config gives open_clip's model SigLIP's logit bias and temperature, which is how the score stage's
    judge (scale auto) tells a SigLIP: score = t cos + b + 28 = 10 cos - 10 + 28."""
    from clipdpo.score.scorer import ClipScorer, ScorerConfig
    from clipdpo_world import clip, siglip

    cfg = tiny_siglip()
    assert siglip.model_config(cfg) == {
        **clip.model_config(cfg.tower),
        "init_logit_scale": math.log(10),
        "init_logit_bias": -10.0,
    }
    siglip.register(str(tmp_path), cfg)
    scorer = ClipScorer(
        ScorerConfig(model_name=siglip.WORLD_SIGLIP_NAME, pretrained=None, model_config_dir=str(tmp_path))
    )
    assert scorer.model.logit_bias.item() == -10.0
    np.testing.assert_allclose(scorer.scale(np.array([0.0, 0.5, 1.0])), [18.0, 23.0, 28.0], rtol=1e-6)


def fake_world(root: Path, key: str = "k0", seed: int = 3) -> Path:
    """A world folder with only the world.json the SigLIP reads: its key and a tiny config."""
    from clipdpo_world.build import WorldConfig

    config = asdict(WorldConfig(seed=seed, train_images=24, heldout_images=12))
    config["clip"] = asdict(tiny_siglip().tower)
    root.mkdir(parents=True)
    (root / "world.json").write_text(json.dumps({"key": key, "config": config}))
    return root


def test_ensure_trains_once_into_the_world_folder_under_its_own_key(tmp_path):
    from clipdpo_world import siglip
    from clipdpo_world.clip import CHECKPOINT

    torch.set_num_threads(1)
    world = fake_world(tmp_path / "world3-k0")
    record = json.loads((world / "world.json").read_text())
    cfg = siglip.world_config(record)
    assert cfg.tower.seed == 3000  # seeded as the build seeds the world's CLIP
    said = []
    folder = Path(siglip.ensure(str(world), say=said.append))
    assert folder.parent == world and folder.name == f"siglip-{siglip.siglip_key('k0', cfg)}"
    assert (folder / CHECKPOINT).exists() and (folder / f"{siglip.WORLD_SIGLIP_NAME}.json").exists()
    measured = json.loads((folder / siglip.RECORD).read_text())
    assert 0.0 <= measured["pairwise_accuracy"] <= 1.0 and measured["config"] == asdict(cfg)
    assert said and not list(world.glob("*.partial"))
    again = []
    assert siglip.ensure(str(world), say=again.append) == str(folder) and again == []  # cached: not trained again
    # another world (key) or another config is another SigLIP
    assert siglip.siglip_key("k1", cfg) != siglip.siglip_key("k0", cfg)
    assert siglip.siglip_key("k0", replace(cfg, init_logit_bias=-5.0)) != siglip.siglip_key("k0", cfg)
    loaded = siglip.scorer_config(str(folder))
    assert loaded["pretrained"] == str((folder / CHECKPOINT).resolve())


def test_ensure_refuses_a_siglip_that_cannot_rank(tmp_path):
    from clipdpo_world import siglip
    from clipdpo_world.clip import WorldBuildError

    torch.set_num_threads(1)
    world = fake_world(tmp_path / "world3-k0")
    cfg = replace(tiny_siglip(), tower=replace(tiny_siglip().tower, seed=3000, min_pairwise_accuracy=1.01))
    with pytest.raises(WorldBuildError, match="world SigLIP ranks a correct caption .* below the 101%"):
        siglip.ensure(str(world), cfg, say=lambda _: None)
    assert not list(world.glob("siglip-*/" + siglip.RECORD))  # nothing half-built passes for a finished SigLIP


def test_siglip_and_judges_are_not_world_modules():
    """The world's key hashes WORLD_MODULES: the SigLIP and the judges' configs change no built world."""
    from clipdpo_world.build import WORLD_MODULES

    assert not {"siglip.py", "judges.py", "stageconfigs.py"} & set(WORLD_MODULES)
