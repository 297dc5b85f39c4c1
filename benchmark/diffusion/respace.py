"""Timestep respacing: run a T-step diffusion on a subset of its steps.

Keeping steps k_1 < ... < k_S of a base process with cumulative products ᾱ_k, the
respaced process has β_i = 1 − ᾱ_{k_i}/ᾱ_{k_{i−1}} (ᾱ_{k_0} := 1), so its own ᾱ_i equals
the base ᾱ_{k_i} exactly (Nichol & Dhariwal 2021, arXiv 2102.09672, section 4). Step
subsets are given as section counts ("250", "10,15,20": the base steps are cut into
equal sections and each is strided evenly to that many steps, the running position summed
in floating point and rounded exactly as improved DDPM's ``space_timesteps``) or as "ddimN" (one
integer stride giving exactly N steps, the DDIM paper's striding, Song et al. 2020,
arXiv 2010.02502). The model is always called with the base-process timestep.
"""
from __future__ import annotations

import re

import numpy as np
import torch

from .gaussian import GaussianDiffusion
from .schedules import beta_schedule

_DDIM = re.compile(r"ddim(\d+)")
_SECTIONS = re.compile(r"\d+(,\d+)*")
VALID_FORMS = "an integer count like '250', comma-separated section counts like '10,15,20', or 'ddimN' like 'ddim50'"


def _ddim_steps(num_timesteps: int, count: int) -> set[int]:
    for stride in range(1, num_timesteps):
        if len(range(0, num_timesteps, stride)) == count:
            return set(range(0, num_timesteps, stride))
    raise ValueError(f"cannot take exactly {count} steps out of {num_timesteps} with one integer stride ('ddim{count}')")


def _section_steps(num_timesteps: int, counts: list[int]) -> set[int]:
    size_per, extra = divmod(num_timesteps, len(counts))
    start, steps = 0, []
    for i, count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if count > size:
            raise ValueError(f"section {i} has {size} steps and cannot be strided to {count} steps")
        # Fractional stride that hits both ends of the section. The position is accumulated, not
        # computed as j * stride: the running float sum is what improved DDPM rounds, and it lands
        # on the other side of a half for some counts (for "21" of 1000 it keeps 499, not 500).
        stride = (size - 1) / (count - 1) if count > 1 else 1
        position = 0.0
        for _ in range(count):
            steps.append(start + round(position))
            position += stride
        start += size
    return set(steps)


def space_timesteps(num_timesteps: int, section_counts: str | int | list[int]) -> set[int]:
    """The set of base-process steps kept for ``section_counts`` (see the module docstring)."""
    if isinstance(section_counts, (int, np.integer)) and not isinstance(section_counts, bool):
        section_counts = [int(section_counts)]
    if isinstance(section_counts, str):
        spec = section_counts.replace(" ", "")
        if match := _DDIM.fullmatch(spec):
            return _ddim_steps(num_timesteps, int(match.group(1)))
        if not _SECTIONS.fullmatch(spec):
            raise ValueError(f"bad timestep respacing {section_counts!r}; expected {VALID_FORMS}")
        section_counts = [int(c) for c in spec.split(",")]
    counts = list(section_counts)
    if not counts or any(isinstance(c, bool) or not isinstance(c, (int, np.integer)) or c < 0 for c in counts) \
            or sum(counts) == 0:
        raise ValueError(f"bad timestep respacing {section_counts!r}: section counts must be non-negative "
                         f"integers with a positive sum; expected {VALID_FORMS}")
    return _section_steps(num_timesteps, [int(c) for c in counts])


class SpacedDiffusion(GaussianDiffusion):
    """A ``GaussianDiffusion`` over the kept steps ``use_timesteps`` of the base betas."""

    def __init__(self, base_betas, use_timesteps, *, learn_sigma: bool = True, **kwargs):
        base_alphas_cumprod = np.cumprod(1.0 - np.asarray(base_betas, dtype=np.float64))
        kept = sorted(set(int(k) for k in use_timesteps))
        if len(kept) < 2 or kept[0] < 0 or kept[-1] >= len(base_alphas_cumprod):
            raise ValueError(f"use_timesteps must hold at least 2 distinct steps in [0, {len(base_alphas_cumprod)}), "
                             f"got {len(kept)} steps spanning {kept[:1]}..{kept[-1:]}")
        alpha_bar = base_alphas_cumprod[kept]
        new_betas = 1.0 - alpha_bar / np.append(1.0, alpha_bar[:-1])
        super().__init__(new_betas, learn_sigma=learn_sigma, **kwargs)
        self.use_timesteps = set(kept)
        self.timestep_map = np.asarray(kept, dtype=np.int64)
        self.original_num_steps = len(base_alphas_cumprod)

    def model_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        table = torch.from_numpy(self.timestep_map).to(device=t.device)
        if t.dim() == 1 and t.numel() > 1 and t.stride(0) == 0:
            # One shared timestep (samplers pass it expanded): keep it expanded.
            return table[t[:1]].to(t.dtype).expand(t.shape[0])
        return table[t].to(t.dtype)


def create_diffusion(timestep_respacing: str | int | list[int] | None = None, *, noise_schedule: str = "linear",
                     learn_sigma: bool = True, num_timesteps: int = 1000, sigma_small: bool = False,
                     rescale_learned_sigmas: bool = False) -> GaussianDiffusion:
    """DiT's diffusion: ``num_timesteps`` base steps of ``noise_schedule``, respaced ("" or None = all)."""
    betas = beta_schedule(noise_schedule, num_timesteps)
    if timestep_respacing is None or timestep_respacing == "":
        timestep_respacing = [num_timesteps]
    return SpacedDiffusion(betas, space_timesteps(num_timesteps, timestep_respacing), learn_sigma=learn_sigma,
                           sigma_small=sigma_small, rescale_learned_sigmas=rescale_learned_sigmas)
