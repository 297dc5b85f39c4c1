"""The diffusion prior loss of Switch-DiT (Park et al. 2024, arXiv 2403.09176, Sec. 3.3).

The prior is a DTR-style sliding-window table ``P`` (T × depth·E, β = k/E,
see ``methods.masks``).  Because the learned experts are exchangeable, the
top-k assignment ``A`` (T × depth·E, one-hot per block) of all timesteps is
first matched to the prior's columns by a minimum-cost bipartite matching on
the L1 cost ``C[i, j] = Σ_t |A[t, i] − P[t, j]|`` (Hungarian algorithm).  The
loss is then the Jensen–Shannon divergence between the batch's gate
probabilities divided by depth and the matched prior rows divided by their sum:

    JSD(p, q) = ½ Σ p (log p − log m) + ½ Σ q (log q − log m),  m = (p + q)/2,

with logs of ``· + 1e-6`` as in the reference code, averaged over the batch.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment


def jsd_loss(p: torch.Tensor, q: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Mean over rows of the Jensen–Shannon divergence (natural log) between row distributions p and q."""
    if p.shape != q.shape:
        raise ValueError(f"p has shape {tuple(p.shape)} but q has shape {tuple(q.shape)}; they must match")
    m = (p + q) / 2
    log_m = torch.log(m + eps)
    kl_p = (p * (torch.log(p + eps) - log_m)).sum(1)
    kl_q = (q * (torch.log(q + eps) - log_m)).sum(1)
    return ((kl_p + kl_q) / 2).mean()


def l1_cost(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """C[i, j] = Σ_t |a[t, i] − b[t, j]| for (T, U) matrices, without a T×U×U intermediate.

    Exact for 0/1 matrices via |x − y| = x + y − 2xy; general inputs fall back to cdist.
    """
    a, b = a.float(), b.float()
    binary = bool(((a == 0) | (a == 1)).all()) and bool(((b == 0) | (b == 1)).all())
    if binary:
        return a.sum(0)[:, None] + b.sum(0)[None, :] - 2 * (a.T @ b)
    return torch.cdist(a.T.contiguous(), b.T.contiguous(), p=1)


@torch.no_grad()
def match_columns(assign: torch.Tensor, prior: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """perm with ``prior[:, perm[i]]`` matched to ``assign[:, i]`` at minimum total L1 cost.

    Both column orders are shuffled first, as the reference code does each
    step, so that ties between equally cheap matchings are broken at random
    rather than always toward the lowest index.
    """
    if assign.dim() != 2 or assign.shape != prior.shape:
        raise ValueError(f"assign {tuple(assign.shape)} and prior {tuple(prior.shape)} must both be (T, U)")
    units = assign.shape[1]
    rg = torch.randperm(units, generator=generator)
    rp = torch.randperm(units, generator=generator)
    cost = l1_cost(assign.cpu()[:, rg], prior.cpu()[:, rp])
    rows, cols = linear_sum_assignment(cost.double().numpy())
    perm = torch.empty(units, dtype=torch.long)
    perm[rg[torch.from_numpy(rows)]] = rp[torch.from_numpy(np.asarray(cols))]
    return perm


def prior_jsd(
    probs: torch.Tensor, prior_rows: torch.Tensor, perm: torch.Tensor, depth: int
) -> torch.Tensor:
    """JSD between batch gate probabilities / depth and the matched prior rows normalised to sum 1.

    probs (N, depth·E) are per-block softmaxes concatenated, so ``probs/depth`` sums to 1.
    """
    target = prior_rows[:, perm.to(prior_rows.device)]
    return jsd_loss(probs / depth, target / target.sum(1, keepdim=True))
