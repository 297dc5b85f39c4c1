"""Per-timestep weights on the ε-MSE and learned uncertainty weighting over timestep clusters.

With SNR(t) = ᾱ_t/(1 − ᾱ_t):
- ``constant``: 1 (L_simple of Ho et al. 2020, arXiv 2006.11239).
- ``min_snr`` (k): Min-SNR-γ of Hang et al. 2023 (arXiv 2303.09556) for an ε-predicting
  model, min(SNR, K)/SNR.
- ``p2`` (gamma, k): P2 weighting of Choi et al. 2022 (arXiv 2204.00227, eq. 8),
  1/(K + SNR)^γ, not normalised.
These are the definitions of the official DTR / Switch-DiT training code
(``mse_loss_weight_type`` "constant", "min_snr_K", "p2weight_GAMMA_K"), whose spelling
``p2weight_…`` is accepted as an alias of ``p2_…``.

``UncertaintyWeighting`` is the multi-task uncertainty weighting of Kendall et al. 2018
(arXiv 1705.07115) over clusters of timesteps, in the form DTR (Park et al., ICLR 2024)
and Switch-DiT train with ("uw"): a learnable log-variance s_c per cluster and loss
Σ_c ½ (exp(−s_c) · L̄_c / C + s_c), with L̄_c the mean per-sample loss of cluster c and
C the number of clusters (the official code divides each cluster mean by C inside the
weighted term and sums over clusters). Cluster boundaries come from ``CLUSTERINGS``:
"uniform" (C equal intervals of [0, T), the official choice) or "snr" (C intervals of
equal width in log-SNR: a simple stand-in for the SNR-based interval clustering of ANT,
Go et al., NeurIPS 2023, not a reimplementation of it).
"""
from __future__ import annotations

import re
from functools import partial
from typing import Callable

import numpy as np
import torch

from kernels.registry import Registry

DEFAULT_LR = 0.025  # learning rate of the s_c parameters in the official DTR/Switch-DiT training

LossWeightFn = Callable[[np.ndarray, torch.Tensor], torch.Tensor]


def _gather(alphas_cumprod, t: torch.Tensor) -> torch.Tensor:
    table = torch.as_tensor(np.asarray(alphas_cumprod, dtype=np.float64))
    return table.to(t.device)[t]


def snr(alphas_cumprod, t: torch.Tensor) -> torch.Tensor:
    """SNR(t) = ᾱ_t/(1 − ᾱ_t) as a float64 tensor on t's device."""
    alpha_bar = _gather(alphas_cumprod, t)
    return alpha_bar / (1.0 - alpha_bar)


def constant_weight(alphas_cumprod, t: torch.Tensor) -> torch.Tensor:
    return torch.ones(t.shape, dtype=torch.float64, device=t.device)


def min_snr_weight(alphas_cumprod, t: torch.Tensor, *, k: float) -> torch.Tensor:
    s = snr(alphas_cumprod, t)
    return torch.clamp(s, max=k) / s


def p2_weight(alphas_cumprod, t: torch.Tensor, *, gamma: float, k: float) -> torch.Tensor:
    return 1.0 / (k + snr(alphas_cumprod, t)) ** gamma


def _min_snr(k: float) -> LossWeightFn:
    if not float(k) > 0:
        raise ValueError(f"min_snr k={k!r} is invalid: must be > 0")
    return partial(min_snr_weight, k=float(k))


def _p2(gamma: float, k: float) -> LossWeightFn:
    if not (float(k) > 0 and float(gamma) >= 0):
        raise ValueError(f"p2 k={k!r}, gamma={gamma!r} are invalid: need k > 0 and gamma >= 0")
    return partial(p2_weight, gamma=float(gamma), k=float(k))


def _uw(num_clusters: int = 8, clustering: str = "uniform", lr: float = DEFAULT_LR) -> LossWeightFn:
    # Uncertainty weighting acts on cluster means (UncertaintyWeighting); each sample's weight is 1.
    return constant_weight


# name -> builder taking the weighting's parameters as keywords (the loss_weight config group's keys).
LOSS_WEIGHTS: Registry[Callable[..., LossWeightFn]] = Registry("loss weight", {
    "constant": lambda: constant_weight,
    "min_snr": _min_snr,
    "p2": _p2,
    "uw": _uw,
})


def loss_weight(name: str, **params) -> LossWeightFn:
    """Weight function ``(alphas_cumprod, t) -> (N,) float64`` of weighting ``name`` with its parameters."""
    return LOSS_WEIGHTS.lookup(name)(**params)


_NUM = r"(\d+(?:\.\d*)?|\.\d+)"
# The official code's string forms: "constant", "min_snr_K", "p2weight_GAMMA_K" (also "p2_GAMMA_K").
_SPELLINGS = (
    (re.compile(r"constant"), lambda m: loss_weight("constant")),
    (re.compile(rf"min_snr_{_NUM}"), lambda m: loss_weight("min_snr", k=float(m.group(1)))),
    (re.compile(rf"p2(?:weight)?_{_NUM}_{_NUM}"), lambda m: loss_weight("p2", gamma=float(m.group(1)), k=float(m.group(2)))),
)


def parse_loss_weight(spec: str) -> LossWeightFn:
    """Weight function for the official code's spelling ("min_snr_5", "p2weight_1_1", "constant")."""
    if isinstance(spec, str):
        for pattern, build in _SPELLINGS:
            if match := pattern.fullmatch(spec.strip()):
                return build(match)
    hint = " ('uw' is not a per-sample weight: use UncertaintyWeighting)" if spec == "uw" else ""
    raise ValueError(f"unknown loss weight {spec!r}{hint}; valid forms: ['constant', 'min_snr_K', 'p2_GAMMA_K'] "
                     f"e.g. 'constant', 'min_snr_5', 'p2_1_1', 'p2_0.5_1'")


# -- uncertainty weighting ---------------------------------------------------------------------
def uniform_edges(num_timesteps: int, num_clusters: int, alphas_cumprod=None) -> np.ndarray:
    # int(T/C · c), the official DTR cluster boundaries.
    return np.array([int(num_timesteps / num_clusters * c) for c in range(num_clusters + 1)], dtype=np.int64)


def snr_edges(num_timesteps: int, num_clusters: int, alphas_cumprod=None) -> np.ndarray:
    if alphas_cumprod is None or len(alphas_cumprod) != num_timesteps:
        raise ValueError(f"boundaries='snr' needs alphas_cumprod of length {num_timesteps}, got "
                         f"{None if alphas_cumprod is None else len(alphas_cumprod)}")
    alpha_bar = np.asarray(alphas_cumprod, dtype=np.float64)
    log_snr = np.log(alpha_bar) - np.log1p(-alpha_bar)  # decreasing in t
    levels = np.linspace(log_snr[0], log_snr[-1], num_clusters + 1)[1:-1]
    # Edge c = number of steps whose log-SNR is still above the c-th level.
    inner = np.searchsorted(-log_snr, -levels, side="right")
    return np.concatenate([[0], inner, [num_timesteps]]).astype(np.int64)


CLUSTERINGS: dict[str, Callable[..., np.ndarray]] = {"uniform": uniform_edges, "snr": snr_edges}


class UncertaintyWeighting(torch.nn.Module):
    """Learned per-cluster weights on a per-sample loss (see the module docstring)."""

    DEFAULT_LR = DEFAULT_LR

    def __init__(self, num_timesteps: int = 1000, num_clusters: int = 8, boundaries: str = "uniform",
                 alphas_cumprod=None):
        super().__init__()
        if boundaries not in CLUSTERINGS:
            raise ValueError(f"unknown boundaries {boundaries!r}; valid: {sorted(CLUSTERINGS)}")
        if not (isinstance(num_clusters, int) and isinstance(num_timesteps, int) and 1 <= num_clusters <= num_timesteps):
            raise ValueError(f"need integers 1 <= num_clusters <= num_timesteps, got num_clusters={num_clusters!r}, "
                             f"num_timesteps={num_timesteps!r}")
        edges = CLUSTERINGS[boundaries](num_timesteps, num_clusters, alphas_cumprod)
        if np.any(np.diff(edges) <= 0):
            raise ValueError(f"boundaries={boundaries!r} leave an empty cluster: edges {edges.tolist()}")
        self.num_timesteps, self.num_clusters = num_timesteps, num_clusters
        # Not saved in state_dict: it is derived from the constructor arguments, and the
        # official checkpoints hold only `loss_scale`.
        self.register_buffer("edges", torch.from_numpy(edges), persistent=False)
        self.loss_scale = torch.nn.Parameter(torch.zeros(num_clusters))  # s_c = log σ_c², official name

    def cluster_of(self, t: torch.Tensor) -> torch.Tensor:
        """Cluster index c with edges[c] <= t < edges[c+1]."""
        if t.dtype.is_floating_point or t.dtype == torch.bool:
            raise TypeError(f"t must be an integer tensor, got {t.dtype}")
        # Range check on CPU only, to avoid a host sync per training step on accelerators.
        if t.device.type == "cpu" and t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.num_timesteps):
            raise ValueError(f"timesteps must lie in [0, {self.num_timesteps}), got [{int(t.min())}, {int(t.max())}]")
        return torch.bucketize(t, self.edges[1:-1].to(t.device), right=True)

    def cluster_sizes(self, batch: int) -> list[int]:
        """Samples per cluster: an equal share, the remainder spread over the first clusters."""
        share, extra = divmod(batch, self.num_clusters)
        return [share + (1 if c < extra else 0) for c in range(self.num_clusters)]

    def sample_timesteps(self, batch: int, generator: torch.Generator | None = None,
                         device: torch.device | str | None = None) -> torch.Tensor:
        """Stratified timesteps, cluster by cluster (uniform within a cluster), as a LongTensor."""
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ValueError(f"batch must be a positive int, got {batch!r}")
        draw_device = generator.device if generator is not None else device
        edges = self.edges.tolist()
        parts = [torch.randint(edges[c], edges[c + 1], (n,), generator=generator, device=draw_device)
                 for c, n in enumerate(self.cluster_sizes(batch)) if n]
        return torch.cat(parts).to(device if device is not None else draw_device)

    def weights(self) -> torch.Tensor:
        """Current effective weights ½ exp(−s_c) (for logging)."""
        return 0.5 * torch.exp(-self.loss_scale.detach())

    def forward(self, per_sample_loss: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if per_sample_loss.dim() != 1 or per_sample_loss.shape != t.shape:
            raise ValueError(f"per_sample_loss must be 1-D and match t's shape {tuple(t.shape)}, "
                             f"got {tuple(per_sample_loss.shape)}")
        cluster = self.cluster_of(t).to(per_sample_loss.device)
        sums = per_sample_loss.new_zeros(self.num_clusters).index_add(0, cluster, per_sample_loss)
        counts = torch.bincount(cluster, minlength=self.num_clusters)
        present = counts > 0
        means = sums / counts.clamp(min=1).to(sums.dtype)
        s = self.loss_scale.to(sums.dtype)
        terms = 0.5 * (torch.exp(-s) * means / self.num_clusters + s)
        return terms[present].sum()
