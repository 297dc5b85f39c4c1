"""Reverse-process samplers and classifier-free guidance for ε-prediction models.

- ``ddpm_sample``: ancestral sampling x_{t−1} = μ_θ(x_t, t) + σ_t z, no noise at t = 0
  (Ho et al. 2020, arXiv 2006.11239, Algorithm 2, with the variance of ``p_mean_variance``).
- ``ddim_sample``: Song et al. 2020 (arXiv 2010.02502) eq. 12,
  x_{t−1} = √ᾱ_{t−1} x̂_0 + √(1 − ᾱ_{t−1} − σ_t²) ε̂ + σ_t z, with
  σ_t = η √((1 − ᾱ_{t−1})/(1 − ᾱ_t)) √(1 − ᾱ_t/ᾱ_{t−1}) (eq. 16); η = 0 is deterministic.
- ``cfg_model_fn``: classifier-free guidance (Ho & Salimans 2022, arXiv 2207.12598),
  ε̂ = ε_uncond + s (ε_cond − ε_uncond), batched the way DiT's ``forward_with_cfg`` does it.

Both samplers step through every step of the diffusion they are given (respace it for
fewer steps) and draw one normal tensor per step, including the last, so with the global
RNG they consume random numbers in the same order as ADM/DiT's sampling loops.
"""
from __future__ import annotations

from typing import Callable

import torch

from .gaussian import GaussianDiffusion, ModelFn, unpack_model_output
from .tables import extract

StepCallback = Callable[[int, torch.Tensor, torch.Tensor], None]


def _randn(like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    device = generator.device if generator is not None else like.device
    return torch.randn(like.shape, generator=generator, device=device, dtype=like.dtype).to(like.device)


def _ddpm_step(diffusion: GaussianDiffusion, out: dict, x: torch.Tensor, t: torch.Tensor, z: torch.Tensor,
               eta: float) -> torch.Tensor:
    nonzero = (t != 0).to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
    return (out["mean"] + nonzero * torch.exp(0.5 * out["log_variance"]) * z).to(x.dtype)


def _ddim_step(diffusion: GaussianDiffusion, out: dict, x: torch.Tensor, t: torch.Tensor, z: torch.Tensor,
               eta: float) -> torch.Tensor:
    # ε is re-derived from x̂_0 so that clipping x̂_0 stays consistent with the update.
    eps = diffusion.predict_eps_from_xstart(x, t, out["pred_xstart"])
    alpha_bar = extract(diffusion.alphas_cumprod, t, x)
    alpha_bar_prev = extract(diffusion.alphas_cumprod_prev, t, x)
    sigma = eta * torch.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar)) * torch.sqrt(1 - alpha_bar / alpha_bar_prev)
    mean = out["pred_xstart"] * torch.sqrt(alpha_bar_prev) + torch.sqrt(1 - alpha_bar_prev - sigma ** 2) * eps
    nonzero = (t != 0).to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
    return (mean + nonzero * sigma * z).to(x.dtype)


@torch.no_grad()
def _sample_loop(step, model_fn: ModelFn, diffusion: GaussianDiffusion, shape, *, eta: float, noise, generator,
                 device, dtype, model_kwargs, clip_denoised, progress, on_step) -> torch.Tensor:
    if noise is not None:
        if tuple(noise.shape) != tuple(shape):
            raise ValueError(f"noise shape {tuple(noise.shape)} must equal the requested shape {tuple(shape)}")
        x = noise
    else:
        x = torch.randn(tuple(shape), generator=generator, dtype=dtype,
                        device=generator.device if generator is not None else device).to(device)
    steps = range(diffusion.num_timesteps - 1, -1, -1)
    if progress:
        from tqdm.auto import tqdm  # imported lazily: only needed for interactive runs
        steps = tqdm(steps)
    kwargs = model_kwargs or {}
    for i in steps:
        t = _step_timesteps(i, x)
        output, _ = unpack_model_output(model_fn(x, diffusion.model_timesteps(t), **kwargs))
        out = diffusion.p_mean_variance(output, x, t, clip_denoised=clip_denoised)
        x = step(diffusion, out, x, t, _randn(x, generator), eta)
        if on_step is not None:
            on_step(i, x, out["pred_xstart"])
    return x


def ddpm_sample(model_fn: ModelFn, diffusion: GaussianDiffusion, shape, *, noise: torch.Tensor | None = None,
                generator: torch.Generator | None = None, device: torch.device | str | None = None,
                dtype: torch.dtype = torch.float32, model_kwargs: dict | None = None, clip_denoised: bool = False,
                progress: bool = False, on_step: StepCallback | None = None) -> torch.Tensor:
    """Ancestral samples of ``shape`` from x_T = ``noise`` (or fresh N(0, I)).

    ``model_fn(x_t, t_model, **model_kwargs)`` gets the model-scale timesteps;
    ``on_step(t, x_{t−1}, x̂_0)`` is called after every step.
    """
    return _sample_loop(_ddpm_step, model_fn, diffusion, shape, eta=0.0, noise=noise, generator=generator,
                        device=device, dtype=dtype, model_kwargs=model_kwargs, clip_denoised=clip_denoised,
                        progress=progress, on_step=on_step)


def _step_timesteps(i: int, x: torch.Tensor) -> torch.Tensor:
    """Every sample's timestep at a sampling step, as an expanded (stride-0) tensor.

    The stride-0 form tells routed models (Switch-DiT) that the whole batch shares one
    timestep without a device-to-host read, so they can mix their experts once.
    """
    return torch.full((), i, dtype=torch.long, device=x.device).expand(x.shape[0])


def ddim_sample(model_fn: ModelFn, diffusion: GaussianDiffusion, shape, *, eta: float = 0.0,
                noise: torch.Tensor | None = None, generator: torch.Generator | None = None,
                device: torch.device | str | None = None, dtype: torch.dtype = torch.float32,
                model_kwargs: dict | None = None, clip_denoised: bool = False, progress: bool = False,
                on_step: StepCallback | None = None) -> torch.Tensor:
    """DDIM samples (eq. 12) with stochasticity ``eta`` in [0, 1]; other arguments as ``ddpm_sample``."""
    if not 0.0 <= float(eta) <= 1.0:
        raise ValueError(f"eta must lie in [0, 1], got {eta!r}")
    return _sample_loop(_ddim_step, model_fn, diffusion, shape, eta=float(eta), noise=noise, generator=generator,
                        device=device, dtype=dtype, model_kwargs=model_kwargs, clip_denoised=clip_denoised,
                        progress=progress, on_step=on_step)


def cfg_model_fn(model_fn: ModelFn, cfg_scale: float, guidance_channels: int | None = 3) -> ModelFn:
    """A model_fn applying classifier-free guidance as DiT's ``forward_with_cfg`` does.

    The batch is [conditional half; unconditional half] (the caller builds ``y = [y, null]``
    and duplicated noise). The model runs on the first half of x repeated twice, guidance
    is applied to the first ``guidance_channels`` output channels (DiT uses 3 of the 4
    latent ε channels, kept for reproducing its numbers; None = all ε channels, i.e. the
    first C = x.shape[1]) and the guided half is written to both halves. Remaining
    channels (the rest of ε and any learned-variance channels) pass through unchanged.
    """
    if guidance_channels is not None and (isinstance(guidance_channels, bool)
                                          or not isinstance(guidance_channels, int) or guidance_channels < 1):
        raise ValueError(f"guidance_channels must be a positive int or None, got {guidance_channels!r}")
    scale = float(cfg_scale)

    def guided(x: torch.Tensor, t: torch.Tensor, **kwargs) -> torch.Tensor:
        if x.shape[0] % 2:
            raise ValueError(f"classifier-free guidance needs an even batch [cond; uncond], got {x.shape[0]}")
        half = x[: x.shape[0] // 2]
        output, _ = unpack_model_output(model_fn(torch.cat([half, half], dim=0), t, **kwargs))
        channels = x.shape[1] if guidance_channels is None else guidance_channels
        if channels > output.shape[1]:
            raise ValueError(f"guidance_channels={channels} exceeds the model's {output.shape[1]} output channels")
        eps, rest = output[:, :channels], output[:, channels:]
        cond, uncond = torch.split(eps, eps.shape[0] // 2, dim=0)
        half_eps = uncond + scale * (cond - uncond)
        return torch.cat([torch.cat([half_eps, half_eps], dim=0), rest], dim=1)

    return guided
