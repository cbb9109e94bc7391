"""POVID's noise schedule (Eq. 4, Appendix A.1) and loss (Eq. 5) against values worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from clipdpo.train.loss import preference_loss
from clipdpo.train.noise import add_diffusion_noise, kept_fraction, noise_variances, noised
from clipdpo.train.povid_loss import povid_loss


def test_first_noise_steps_by_hand():
    # beta_0: l_0 = -6, sigmoid(-6) = 1 / (1 + e^6) = 1 / 404.428794 = 0.00247262316
    #   beta_0 = 0.00247262316 * (0.005 - 0.00001) + 0.00001 = 1.23384e-5 + 1e-5 = 2.23384e-5
    # beta_1: l_1 = -6 + 12/999 = -5.98798799, sigmoid = 1 / (1 + e^5.98798799) = 0.00250243
    #   beta_1 = 0.00250243 * 0.00499 + 0.00001 = 2.24871e-5
    betas = noise_variances()
    assert float(betas[0]) == pytest.approx(2.23384e-5, rel=1e-5)  # 6 significant digits written above
    assert float(betas[1]) == pytest.approx(2.24871e-5, rel=1e-5)
    # the last step: sigmoid(6) = 0.99752738, beta_999 = 0.99752738 * 0.00499 + 1e-5 = 0.00498766
    assert float(betas[999]) == pytest.approx(0.00498766, rel=1e-5)
    # xi_bar_0 = 1 - 2.23384e-5 = 0.9999776616; xi_bar_1 = 0.9999776616 * (1 - 2.24871e-5) = 0.9999551750
    assert kept_fraction(0) == pytest.approx(0.9999776616, rel=1e-9)
    assert kept_fraction(1) == pytest.approx(0.9999551750, rel=1e-9)


def test_paper_noise_step_keeps_the_image_recognisable():
    # Independently of torch: xi_bar_500 as a plain product over the same formula in float64 math.
    product = 1.0
    for i in range(501):
        beta = (1 / (1 + math.exp(-(-6 + 12 * i / 999)))) * (0.5e-2 - 1e-5) + 1e-5
        product *= 1 - beta
    assert kept_fraction(500) == pytest.approx(product, rel=1e-12)  # same float64 maths, different order
    assert product == pytest.approx(0.744799, rel=1e-5)  # signal std 0.863, noise std 0.505 at k = 500
    assert kept_fraction(999) == pytest.approx(0.0812492, rel=1e-5)
    with pytest.raises(ValueError, match="noise_step"):
        kept_fraction(1000)


def test_eq4_with_given_noise_by_hand():
    # k = 0: sqrt(0.9999776616) = 0.9999888307, sqrt(2.23384e-5) = 0.0047263506
    # x = [1, -2], eps = [0.5, 0]: [0.9999888307 + 0.5 * 0.0047263506, -2 * 0.9999888307]
    #                            = [1.0023520060, -1.9999776615]
    out = noised(torch.tensor([1.0, -2.0], dtype=torch.float64), 0, torch.tensor([0.5, 0.0], dtype=torch.float64))
    assert out.tolist() == pytest.approx([1.0023520060, -1.9999776615], rel=1e-9)


def test_noise_is_deterministic_given_the_seed_and_leaves_the_global_rng_alone():
    x = torch.zeros(2, 3, 4, 4)
    state = torch.get_rng_state()
    a, b, c = (
        add_diffusion_noise(x, 500, seed=11),
        add_diffusion_noise(x, 500, seed=11),
        add_diffusion_noise(x, 500, 12),
    )
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(state, torch.get_rng_state())
    # x = 0: the output is sqrt(1 - 0.744799) * eps = 0.505174 * eps with eps ~ N(0, 1). The sample std of 96
    # draws has a relative spread of 1/sqrt(2 * 95) = 7%: 30% is > 4 spreads (and the seeded draw is fixed anyway)
    assert float(a.std()) == pytest.approx(0.505, rel=0.3)


def test_eq5_by_hand():
    # log-ratios: chosen +1, text rejected -1, noisy rejected -2; alpha 0.5, beta_1 0.25, beta_2 0.1
    # z = 0.5 * 1 - (0.25 * -1 + 0.1 * -2) = 0.5 + 0.25 + 0.2 = 0.95
    # loss = -log sigmoid(0.95) = log(1 + e^-0.95) = log(1.386741023) = 0.326956407
    one = torch.tensor([1.0], dtype=torch.float64)
    losses, chosen, rejected = povid_loss(one, -one, -2 * one, alpha=0.5, beta_1=0.25, beta_2=0.1)
    assert float(losses[0]) == pytest.approx(0.326956407, rel=1e-8)
    assert float(chosen[0]) == pytest.approx(0.5) and float(rejected[0]) == pytest.approx(-0.45)


def test_beta2_zero_is_the_text_only_dpo_term():
    # alpha = beta_1 = 0.1, beta_2 = 0, chosen log-ratio 1, rejected -2: h = 3
    # loss = log(1 + e^-0.3) = log(1.740818221) = 0.554355244; DPO's sigmoid loss with beta 0.1 is the same
    pc, pr = torch.tensor([-10.0, -20.0], dtype=torch.float64), torch.tensor([-14.0, -18.0], dtype=torch.float64)
    rc, rr = torch.tensor([-11.0, -19.0], dtype=torch.float64), torch.tensor([-12.0, -19.5], dtype=torch.float64)
    ours, _, _ = povid_loss(pc - rc, pr - rr, None, alpha=0.1, beta_1=0.1, beta_2=0.0)
    dpo, _, _ = preference_loss(pc, pr, rc, rr, loss_type="sigmoid", beta=0.1)
    # beta*(c - r) there vs alpha*c - beta_1*r here: equal up to float64 rounding of the distributed product
    assert torch.allclose(ours, dpo, rtol=1e-12, atol=0)
    one = torch.tensor([1.0], dtype=torch.float64)
    alone, _, _ = povid_loss(one, -2 * one, 123 * one, alpha=0.1, beta_1=0.1, beta_2=0.0)  # noisy term ignored
    assert float(alone[0]) == pytest.approx(0.554355244, rel=1e-8)
    with pytest.raises(ValueError, match="noisy"):
        povid_loss(one, one, None, alpha=0.1, beta_1=0.1, beta_2=0.1)
