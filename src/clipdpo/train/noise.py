"""Diffusion noise on an image (POVID Eq. 4): x(k) = sqrt(xi_bar_k) * x + sqrt(1 - xi_bar_k) * eps.

xi_bar_k = prod_{i=0..k} xi_i. Appendix A.1 gives the per-step noise level as
sigmoid(l_t) * (0.5e-2 - 1e-5) + 1e-5; that quantity is the step's noise *variance* (a DDPM beta_t,
in (1e-5, 5e-3)), and xi_t = 1 - beta_t is the kept fraction: read literally (xi_t = beta_t) the product
would be ~0 after two steps and every noise step would give pure noise, against the paper's "image
remains easily recognizable". l_t runs over linspace(-6, 6, 1000), the schedule of the VCD noise
function POVID reuses (noise step 500 in Table 5). The noise is applied to the processor's
normalised pixel tensor, as there.
"""

from __future__ import annotations

import torch

NUM_STEPS = 1000
BETA_MIN, BETA_MAX = 1e-5, 0.5e-2
SIGMOID_RANGE = 6.0  # l_t = linspace(-6, 6, NUM_STEPS)


def noise_variances() -> torch.Tensor:
    """beta_t for t = 0..NUM_STEPS-1 (float64): sigmoid(l_t) * (BETA_MAX - BETA_MIN) + BETA_MIN."""
    l_t = torch.linspace(-SIGMOID_RANGE, SIGMOID_RANGE, NUM_STEPS, dtype=torch.float64)
    return torch.sigmoid(l_t) * (BETA_MAX - BETA_MIN) + BETA_MIN


def kept_fraction(k: int) -> float:
    """xi_bar_k = prod_{i=0..k} (1 - beta_i): the signal variance left at noise step k."""
    check_noise_step(k)
    return float(torch.prod(1.0 - noise_variances()[: k + 1]))


def check_noise_step(k: int) -> None:
    if not 0 <= k < NUM_STEPS:
        raise ValueError(f"noise_step must be in [0, {NUM_STEPS - 1}], got {k}")


def noised(x: torch.Tensor, k: int, eps: torch.Tensor) -> torch.Tensor:
    """Eq. 4 with given standard-normal noise `eps` (same shape as x); computed in float64, returned in x's dtype."""
    if eps.shape != x.shape:
        raise ValueError(f"noise shape {tuple(eps.shape)} != image shape {tuple(x.shape)}")
    keep = kept_fraction(k)
    out = keep**0.5 * x.double() + (1.0 - keep) ** 0.5 * eps.double().to(x.device)
    return out.to(x.dtype)


def add_diffusion_noise(x: torch.Tensor, k: int, seed: int, copies_dim: int | None = None) -> torch.Tensor:
    """Eq. 4 with eps drawn from N(0, 1) by a CPU generator seeded with `seed`: the same seed gives the
    same noised image on any device and process, and the global RNG is left alone. `copies_dim`: a dimension
    along which x holds copies of the same pixels (Qwen VL's temporal frames of a still image): one draw per
    pixel, shared by its copies, as if the image were noised before it was copied."""
    shape = list(x.shape)
    if copies_dim is not None:
        shape[copies_dim] = 1
    generator = torch.Generator().manual_seed(seed)
    eps = torch.randn(shape, generator=generator, dtype=torch.float64)
    return noised(x, k, eps.expand(x.shape))
