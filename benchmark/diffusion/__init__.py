"""Gaussian diffusion math used by DiT, DTR and Switch-DiT (pure tensor-in/tensor-out).

Schedules (``schedules``), the diffusion process and its losses (``gaussian``,
``likelihood``), timestep respacing (``respace``), DDPM/DDIM samplers and
classifier-free guidance (``samplers``) and loss weightings (``loss_weights``).
References: Ho et al. 2020 (arXiv 2006.11239), Nichol & Dhariwal 2021 (arXiv 2102.09672),
Song et al. 2020 (arXiv 2010.02502), Peebles & Xie 2023 (arXiv 2212.09748).
"""
from .gaussian import FIXED_VARIANCES, GaussianDiffusion, unpack_model_output
from .likelihood import approx_standard_normal_cdf, discretized_gaussian_log_likelihood, normal_kl
from .loss_weights import (CLUSTERINGS, DEFAULT_LR, LOSS_WEIGHTS, UncertaintyWeighting, constant_weight, loss_weight,
                           min_snr_weight, p2_weight, parse_loss_weight, snr)
from .respace import SpacedDiffusion, create_diffusion, space_timesteps
from .samplers import cfg_model_fn, ddim_sample, ddpm_sample
from .schedules import BETA_SCHEDULES, beta_schedule
from .tables import extract, mean_flat

__all__ = [
    "BETA_SCHEDULES", "CLUSTERINGS", "DEFAULT_LR", "FIXED_VARIANCES", "LOSS_WEIGHTS", "GaussianDiffusion",
    "SpacedDiffusion", "UncertaintyWeighting", "approx_standard_normal_cdf", "beta_schedule", "cfg_model_fn",
    "constant_weight", "create_diffusion", "ddim_sample", "ddpm_sample", "discretized_gaussian_log_likelihood",
    "extract", "loss_weight", "mean_flat", "min_snr_weight", "normal_kl", "p2_weight", "parse_loss_weight", "snr",
    "space_timesteps", "unpack_model_output",
]
