"""Discrete-time Gaussian diffusion with ε-prediction, as trained and sampled by DiT.

Forward process q(x_t | x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I) (Ho et al. 2020, arXiv 2006.11239,
eq. 4) and its posterior q(x_{t−1} | x_t, x_0) = N(μ̃_t, β̃_t I) with
μ̃_t = √ᾱ_{t−1} β_t/(1 − ᾱ_t) · x_0 + √α_t (1 − ᾱ_{t−1})/(1 − ᾱ_t) · x_t and
β̃_t = β_t (1 − ᾱ_{t−1})/(1 − ᾱ_t) (eq. 6-7). The reverse variance is either learned by
interpolating log β_t and log β̃_t (Nichol & Dhariwal 2021, arXiv 2102.09672, eq. 15) or
fixed ("large" = β_t, "small" = β̃_t). Training uses the hybrid objective L_simple + L_vlb
(ibid. eq. 16) with a stop-gradient on the mean inside L_vlb, and L_vlb in bits, not
rescaled by T/1000 (the unrescaled "MSE" loss type that DiT, Peebles & Xie 2023,
arXiv 2212.09748, trains with).

Timesteps ``t`` given to every method are indices into THIS diffusion's tables; the
model itself is called with ``model_timesteps(t)``, which a respaced diffusion maps back
to the original 1000-step scale.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from .likelihood import discretized_gaussian_log_likelihood, normal_kl
from .tables import check_timesteps, extract, mean_flat

LOG2 = float(np.log(2.0))

ModelFn = Callable[..., Any]


def _fixed_large(d: "GaussianDiffusion") -> tuple[np.ndarray, np.ndarray]:
    # β_t, except at t = 0 where β̃_1 is used: β_0 is tiny and would make the decoder
    # likelihood needlessly sharp (ADM's choice, kept for matching numbers).
    var = np.append(d.posterior_variance[1], d.betas[1:])
    return var, np.log(var)


def _fixed_small(d: "GaussianDiffusion") -> tuple[np.ndarray, np.ndarray]:
    return d.posterior_variance, d.posterior_log_variance_clipped


FIXED_VARIANCES: dict[str, Callable[["GaussianDiffusion"], tuple[np.ndarray, np.ndarray]]] = {
    "large": _fixed_large,
    "small": _fixed_small,
}


def unpack_model_output(output: Any) -> tuple[torch.Tensor, Any]:
    """Split a model's return value into (prediction, extra).

    Models may return ``(prediction, extra)`` (e.g. an auxiliary routing loss); the
    extra part is passed through untouched.
    """
    if isinstance(output, (tuple, list)):
        if len(output) != 2:
            raise ValueError(f"a model returning a tuple must return (prediction, extra), got {len(output)} items")
        return output[0], output[1]
    if not isinstance(output, torch.Tensor):
        raise TypeError(f"model must return a tensor or (tensor, extra), got {type(output).__name__}")
    return output, None


class GaussianDiffusion:
    """Tables and tensor maps of a diffusion with the given betas (float64, length T >= 2)."""

    def __init__(self, betas, *, learn_sigma: bool = True, sigma_small: bool = False,
                 rescale_learned_sigmas: bool = False):
        betas = np.asarray(betas, dtype=np.float64)
        if betas.ndim != 1 or betas.shape[0] < 2:
            raise ValueError(f"betas must be a 1-D array with at least 2 entries, got shape {betas.shape}")
        if not np.all((betas > 0) & (betas <= 1)):
            raise ValueError(f"betas must lie in (0, 1], got range [{betas.min()}, {betas.max()}]")
        self.learn_sigma = bool(learn_sigma)
        self.fixed_variance = "small" if sigma_small else "large"
        # T/1000 factor on L_vlb (ADM's RESCALED_MSE); off for DiT/DTR/Switch-DiT.
        self.rescale_learned_sigmas = bool(rescale_learned_sigmas)

        self.betas = betas
        self.num_timesteps = int(betas.shape[0])
        alphas = 1.0 - betas
        self.alphas_cumprod = np.cumprod(alphas)
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        self.alphas_cumprod_next = np.append(self.alphas_cumprod[1:], 0.0)

        self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - self.alphas_cumprod)
        self.log_one_minus_alphas_cumprod = np.log(1.0 - self.alphas_cumprod)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod - 1.0)

        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        # β̃_0 = 0, so its log is replaced by log β̃_1 (the value used for the t = 0 decoder).
        self.posterior_log_variance_clipped = np.log(np.append(self.posterior_variance[1],
                                                               self.posterior_variance[1:]))
        self.posterior_mean_coef1 = betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - self.alphas_cumprod)
        self.log_betas = np.log(betas)

    # -- timesteps ----------------------------------------------------------------------
    def model_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        """Timesteps the model is conditioned on for table indices ``t`` (identity here)."""
        return t

    def _check(self, x: torch.Tensor, t: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor) or not x.dtype.is_floating_point or x.dim() < 2:
            raise TypeError(f"x must be a floating tensor of shape (N, C, ...), got "
                            f"{type(x).__name__} {getattr(x, 'dtype', '')} {tuple(getattr(x, 'shape', ()))}")
        check_timesteps(t, x.shape[0], self.num_timesteps)

    # -- forward process ------------------------------------------------------------------
    def q_mean_variance(self, x0: torch.Tensor, t: torch.Tensor):
        """(mean, variance, log_variance) of q(x_t | x_0)."""
        self._check(x0, t)
        return (extract(self.sqrt_alphas_cumprod, t, x0) * x0,
                extract(1.0 - self.alphas_cumprod, t, x0).expand_as(x0),
                extract(self.log_one_minus_alphas_cumprod, t, x0).expand_as(x0))

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε."""
        self._check(x0, t)
        if noise is None:
            noise = torch.randn_like(x0)
        if noise.shape != x0.shape:
            raise ValueError(f"noise shape {tuple(noise.shape)} must equal x0 shape {tuple(x0.shape)}")
        return extract(self.sqrt_alphas_cumprod, t, x0) * x0 + extract(self.sqrt_one_minus_alphas_cumprod, t, x0) * noise

    def q_posterior_mean_variance(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor):
        """(mean, variance, log_variance_clipped) of q(x_{t−1} | x_t, x_0)."""
        self._check(x_t, t)
        if x0.shape != x_t.shape:
            raise ValueError(f"x0 shape {tuple(x0.shape)} must equal x_t shape {tuple(x_t.shape)}")
        mean = extract(self.posterior_mean_coef1, t, x_t) * x0 + extract(self.posterior_mean_coef2, t, x_t) * x_t
        var = extract(self.posterior_variance, t, x_t).expand_as(x_t)
        log_var = extract(self.posterior_log_variance_clipped, t, x_t).expand_as(x_t)
        return mean, var, log_var

    # -- ε <-> x_0 ----------------------------------------------------------------------------
    def predict_xstart_from_eps(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x_0 = (x_t − √(1 − ᾱ_t) ε)/√ᾱ_t."""
        return extract(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t - extract(self.sqrt_recipm1_alphas_cumprod, t, x_t) * eps

    def predict_eps_from_xstart(self, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """ε = (x_t/√ᾱ_t − x_0)/√(1/ᾱ_t − 1)."""
        return (extract(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t - x0) / extract(self.sqrt_recipm1_alphas_cumprod, t, x_t)

    # -- reverse process ------------------------------------------------------------------
    def split_output(self, model_output: torch.Tensor, x_t: torch.Tensor):
        """(eps, variance values in [-1, 1] or None) from a (N, 2C, ...) or (N, C, ...) output."""
        channels = x_t.shape[1] * (2 if self.learn_sigma else 1)
        expected = (x_t.shape[0], channels, *x_t.shape[2:])
        if tuple(model_output.shape) != expected:
            kind = "2C (ε and variance)" if self.learn_sigma else "C (ε only)"
            raise ValueError(f"model output shape {tuple(model_output.shape)} must be {expected}: "
                             f"{kind} channels for learn_sigma={self.learn_sigma}")
        if not self.learn_sigma:
            return model_output, None
        eps, var_values = torch.split(model_output, x_t.shape[1], dim=1)
        return eps, var_values

    def p_mean_variance(self, model_output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
                        clip_denoised: bool = False) -> dict[str, torch.Tensor]:
        """Mean/variance of p(x_{t−1} | x_t) from a model output, plus the x_0 and ε predictions."""
        self._check(x_t, t)
        eps, var_values = self.split_output(model_output, x_t)
        if var_values is not None:
            # Improved DDPM eq. 15: v ∈ [-1, 1] maps to log Σ = v' log β_t + (1 − v') log β̃_t, v' = (v+1)/2.
            min_log = extract(self.posterior_log_variance_clipped, t, x_t)
            max_log = extract(self.log_betas, t, x_t)
            frac = (var_values + 1) / 2
            log_variance = frac * max_log + (1 - frac) * min_log
            variance = torch.exp(log_variance)
        else:
            var_table, log_var_table = FIXED_VARIANCES[self.fixed_variance](self)
            variance = extract(var_table, t, x_t).expand_as(x_t)
            log_variance = extract(log_var_table, t, x_t).expand_as(x_t)
        pred_xstart = self.predict_xstart_from_eps(x_t, t, eps)
        if clip_denoised:
            pred_xstart = pred_xstart.clamp(-1, 1)
        mean, _, _ = self.q_posterior_mean_variance(pred_xstart, x_t, t)
        return {"mean": mean, "variance": variance, "log_variance": log_variance,
                "pred_xstart": pred_xstart, "eps": eps}

    # -- losses ----------------------------------------------------------------------------------
    def vb_terms_bpd(self, model_output: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor,
                     t: torch.Tensor) -> torch.Tensor:
        """Per-sample L_{t−1} term of the VLB in bits/dim: KL(q ‖ p) for t > 0, decoder NLL at t = 0."""
        true_mean, _, true_log_var = self.q_posterior_mean_variance(x0, x_t, t)
        out = self.p_mean_variance(model_output, x_t, t, clip_denoised=False)
        kl = mean_flat(normal_kl(true_mean, true_log_var, out["mean"], out["log_variance"])) / LOG2
        nll = -discretized_gaussian_log_likelihood(x0, means=out["mean"], log_scales=0.5 * out["log_variance"])
        nll = mean_flat(nll) / LOG2
        return torch.where(t.to(kl.device) == 0, nll, kl)

    def training_losses(self, model_fn: ModelFn, x0: torch.Tensor, t: torch.Tensor,
                        noise: torch.Tensor | None = None, model_kwargs: dict | None = None,
                        mse_weight: torch.Tensor | Callable | None = None) -> dict[str, Any]:
        """Per-sample hybrid loss for one timestep per sample.

        Returns a dict of (N,) tensors: "mse" (ε-MSE, times ``mse_weight`` if given), "vb"
        (only when learning sigma), "loss" = mse + vb; plus "extra" if the model returned
        ``(prediction, extra)``. ``mse_weight`` is an (N,) tensor or a function
        ``(alphas_cumprod, t) -> (N,)`` such as one from ``parse_loss_weight``.
        """
        self._check(x0, t)
        if noise is None:
            noise = torch.randn_like(x0)
        x_t = self.q_sample(x0, t, noise)
        output, extra = unpack_model_output(model_fn(x_t, self.model_timesteps(t), **(model_kwargs or {})))
        eps, var_values = self.split_output(output, x_t)

        terms: dict[str, Any] = {}
        mse = mean_flat((noise - eps) ** 2)
        if mse_weight is not None:
            weight = mse_weight(self.alphas_cumprod, t) if callable(mse_weight) else mse_weight
            if not isinstance(weight, torch.Tensor) or weight.shape != mse.shape:
                raise ValueError(f"mse_weight must give a tensor of shape {tuple(mse.shape)}, got "
                                 f"{tuple(getattr(weight, 'shape', ())) or type(weight).__name__}")
            mse = mse * weight.to(device=mse.device, dtype=mse.dtype)
        terms["mse"] = mse
        if var_values is not None:
            # The VLB only trains the variance: the mean (ε) enters through a stop-gradient.
            frozen = torch.cat([eps.detach(), var_values], dim=1)
            vb = self.vb_terms_bpd(frozen, x0, x_t, t)
            if self.rescale_learned_sigmas:
                vb = vb * (self.num_timesteps / 1000.0)
            terms["vb"] = vb
            terms["loss"] = mse + vb
        else:
            terms["loss"] = mse
        if extra is not None:
            terms["extra"] = extra
        return terms
