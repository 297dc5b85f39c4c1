"""Named noise (beta) schedules for Gaussian diffusion, as float64 numpy tables.

- ``linear``: Ho et al. 2020 (arXiv 2006.11239), betas evenly spaced from 1e-4 to 0.02
  for T = 1000; for other T both ends are scaled by 1000/T so that the schedule keeps
  the same shape in the limit (the convention of improved DDPM / ADM, which DiT uses).
- ``cosine``: Nichol & Dhariwal 2021 (arXiv 2102.09672), eq. 17:
  ᾱ(t) = f(t)/f(0), f(t) = cos(((t/T) + s)/(1 + s) · π/2)², s = 0.008, discretised as
  β_i = 1 − ᾱ((i+1)/T)/ᾱ(i/T) and clipped at 0.999 to avoid the singularity at t = T.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

COSINE_OFFSET = 0.008  # s in improved DDPM eq. 17
MAX_BETA = 0.999  # clip of improved DDPM section 3.2


def linear_betas(num_timesteps: int) -> np.ndarray:
    scale = 1000.0 / num_timesteps
    return np.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=np.float64)


def cosine_alpha_bar(u: np.ndarray) -> np.ndarray:
    """f(u) of improved DDPM eq. 17 on normalised time u = t/T in [0, 1] (not divided by f(0))."""
    return np.cos((u + COSINE_OFFSET) / (1.0 + COSINE_OFFSET) * np.pi / 2) ** 2


def cosine_betas(num_timesteps: int) -> np.ndarray:
    f = cosine_alpha_bar(np.arange(num_timesteps + 1, dtype=np.float64) / num_timesteps)
    # ᾱ is a ratio to f(0), which cancels in consecutive ratios, so f can be used directly.
    return np.minimum(1.0 - f[1:] / f[:-1], MAX_BETA)


BETA_SCHEDULES: dict[str, Callable[[int], np.ndarray]] = {
    "linear": linear_betas,
    "cosine": cosine_betas,
}


def beta_schedule(name: str, num_timesteps: int = 1000) -> np.ndarray:
    """Return the float64 betas (length ``num_timesteps``) of the named schedule."""
    if name not in BETA_SCHEDULES:
        raise ValueError(f"unknown noise schedule {name!r}; valid names: {sorted(BETA_SCHEDULES)}")
    if isinstance(num_timesteps, bool) or not isinstance(num_timesteps, (int, np.integer)) or num_timesteps < 2:
        raise ValueError(f"num_timesteps must be an integer >= 2, got {num_timesteps!r}")
    return BETA_SCHEDULES[name](int(num_timesteps))
