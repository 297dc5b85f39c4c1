"""Gaussian KL and discretised-Gaussian log-likelihood used by the variational bound.

Formulas follow Ho et al. 2020 (arXiv 2006.11239, section 3.3, the discrete decoder
L_0) and Nichol & Dhariwal 2021 (arXiv 2102.09672, eq. 4-5, the hybrid objective's
L_vlb), with the standard normal CDF approximated through tanh (as ADM does) so the
numbers match published training code.
"""
from __future__ import annotations

import math

import torch

# Half a bin of an 8-bit image rescaled to [-1, 1].
HALF_BIN = 1.0 / 255.0
LOG_FLOOR = 1e-12


def normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))) elementwise, in nats (broadcasts)."""
    ref = next((v for v in (mean1, logvar1, mean2, logvar2) if isinstance(v, torch.Tensor)), None)
    if ref is None:
        raise TypeError("normal_kl needs at least one tensor argument, got only Python numbers")
    logvar1, logvar2 = (v if isinstance(v, torch.Tensor) else torch.tensor(v).to(ref) for v in (logvar1, logvar2))
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2)
                  + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    """Φ(x) ≈ ½(1 + tanh(√(2/π)(x + 0.044715 x³))) (Page 1977 approximation, used by ADM)."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def discretized_gaussian_log_likelihood(x: torch.Tensor, *, means: torch.Tensor,
                                        log_scales: torch.Tensor) -> torch.Tensor:
    """Log-probability (nats) of the 8-bit bin around each x in [-1, 1] under N(means, exp(log_scales)²).

    The edge bins extend to ±∞ (Ho et al. 2020, eq. 13).
    """
    if not (x.shape == means.shape == log_scales.shape):
        raise ValueError(f"x, means and log_scales must share a shape, got {tuple(x.shape)}, "
                         f"{tuple(means.shape)}, {tuple(log_scales.shape)}")
    centered = x - means
    inv_std = torch.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv_std * (centered + HALF_BIN))
    cdf_min = approx_standard_normal_cdf(inv_std * (centered - HALF_BIN))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=LOG_FLOOR))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=LOG_FLOOR))
    log_delta = torch.log((cdf_plus - cdf_min).clamp(min=LOG_FLOOR))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_delta))
