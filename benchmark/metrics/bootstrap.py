"""Bootstrap intervals for FID, Precision and Recall over the generated samples.

Bootstrap (Efron & Tibshirani 1993, ch. 13): the generated feature rows are
resampled with replacement B times (``resample_indices``), the reference is
held fixed, each metric is recomputed from the features already extracted, and
the interval is the (1 - level) / 2 and (1 + level) / 2 percentiles of the B
values, bias-shifted onto the point estimate (see the end of this docstring).
No Inception pass is repeated.

Fréchet distance (Heusel et al. 2017, eq. 6) of a resample X_b (N rows, D dims)
against the fixed N(mu2, S2): ``|mu_b - mu2|^2 + Tr S_b + Tr S2 - 2 Tr (S_b S2)^(1/2)``.

* N <= D (``frechet_resamples_gram``): with Xc_b the centred rows, S_b S2 shares
  its non-zero eigenvalues with Xc_b S2 Xc_b^T / (N - 1). Xc_b = P F[idx] with the
  centring projector P, so that matrix is the double-centred submatrix of
  K = F S2 F^T at the resampled rows. A row drawn c times repeats c times in it;
  the same non-zero eigenvalues come from the U x U matrix over the U distinct
  drawn rows, centred at the resample mean and scaled by sqrt(c) on both sides,
  which is smaller (U is about 0.63 N) and has no duplicate-row null space. K
  (and the Gram F F^T for the mean and trace terms) is formed once; each
  resample is a gather and one symmetric eigensolve: O(N^3), no D-sized work.
* N > D (``frechet_resamples_cov``): with H = F S2^(1/2) and counts c_b (how often
  each row was drawn), S2^(1/2) S_b S2^(1/2) = (H^T diag(c_b) H - N h_b h_b^T) / (N - 1),
  h_b the resample mean of H; its symmetric eigenvalues give Tr (S_b S2)^(1/2).
  Each resample costs a (U x D)^T (U x D) product and a D x D float64
  eigensolve on the evaluation device: at N = 50,000 and D = 2048 about 3e11
  flops, which a GPU does quickly and a 2-core CPU does in seconds per resample
  (B = 200 then takes a long time on CPU; run large sets on a GPU).

Features are centred by the full-sample mean before either path; both paths
are invariant to that shift, and it avoids cancellation in float64.

Precision/Recall (Kynkäänniemi et al. 2019) are bootstrapped conditionally on
the k-NN manifolds of the full sets (``manifold.manifold_membership``):

* precision of a resample is the mean of the resampled generated samples'
  "inside the real manifold" indicators (the real manifold does not change);
* recall of a resample is the fraction of real samples inside the ball of at
  least one *resampled* generated sample, each ball keeping the radius it has
  in the full generated set. Recomputing the radii inside a resample would
  count a drawn duplicate as its own nearest neighbour (distance 0) and shrink
  the balls, biasing recall down; so the radii are held fixed, and the
  interval reflects which generated samples were drawn, not radius noise.

Where the interval sits. A resample holds on average 1 - 1/e of the distinct
generated samples, so the plain percentiles are offset from the point estimate:
FID resamples carry FID's finite-sample bias a second time and lie above it, and
with the balls held fixed a recall resample is never above the full value.
``centred_interval`` therefore shifts the resampled values by the bootstrap
estimate of that offset (their mean minus the point estimate; Efron & Tibshirani
1993, ch. 10) before taking the percentiles: the interval keeps the width of the
sampling spread and is centred where the measurement is. It says whether two
numbers differ by more than resampling the generated samples moves them; it is
not an unbiased estimate of the metric at infinite samples.
"""
from __future__ import annotations

import numpy as np
import torch

from .manifold import ManifoldMembership, pack_bits

LEVEL = 0.95
METHOD = ("percentile of the resampled values shifted by their bias (mean minus point estimate), "
          "generated samples resampled with replacement, reference fixed")

# Working-set bounds for batching resamples together (bytes).
_GATHER_BYTES = 1 << 27
_RECALL_BYTES = 1 << 26


def check_count(name: str, value) -> int:
    """``value`` as a non-negative int, or a one-line ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name}={value!r} must be a non-negative integer")
    return int(value)


def resample_indices(n: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, n) int64 row indices drawn uniformly with replacement by ``np.random.default_rng(seed)``."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n={n!r} must be a positive number of samples")
    resamples, seed = check_count("resamples", resamples), check_count("seed", seed)
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n), dtype=np.int64)


def resample_counts(indices: np.ndarray, n: int) -> np.ndarray:
    """(B, n) counts: how many times each row appears in each resample."""
    counts = np.zeros((indices.shape[0], n), dtype=np.int64)
    np.add.at(counts, (np.arange(indices.shape[0])[:, None], indices), 1)
    return counts


def percentile_interval(values, level: float = LEVEL) -> list[float]:
    """[lo, hi]: the (1 - level) / 2 and (1 + level) / 2 percentiles (numpy's linear interpolation)."""
    values = np.asarray(values, np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"need a non-empty 1-d array of bootstrap values, got shape {values.shape}")
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(values, [tail, 100 - tail])
    return [float(lo), float(hi)]


def centred_interval(values, point: float, level: float = LEVEL) -> list[float]:
    """``percentile_interval`` of ``values - (mean(values) - point)``: the spread, centred on ``point``."""
    values = np.asarray(values, np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"need a non-empty 1-d array of bootstrap values, got shape {values.shape}")
    return percentile_interval(values - (values.mean() - float(point)), level)


def _as_float64(x, device) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).to(device, torch.float64)


def _sqrt_eig_sums(sym: torch.Tensor) -> torch.Tensor:
    """Per matrix of a (..., M, M) symmetric PSD batch: sum of sqrt of its eigenvalues (round-off negatives -> 0)."""
    eig = torch.linalg.eigvalsh((sym + sym.transpose(-1, -2)) / 2)
    return eig.clamp(min=0).sqrt().sum(dim=-1)


def _prepare(features, mu2, sigma2, device):
    f = _as_float64(features, device)
    if f.dim() != 2 or f.shape[0] < 2:
        raise ValueError(f"need (N >= 2, D) features, got shape {tuple(f.shape)}")
    mu2, sigma2 = _as_float64(mu2, device), _as_float64(sigma2, device)
    d = f.shape[1]
    if mu2.shape != (d,) or sigma2.shape != (d, d):
        raise ValueError(f"statistics do not match features of dim {d}: mu {tuple(mu2.shape)}, sigma {tuple(sigma2.shape)}")
    mean = f.mean(dim=0)
    return f - mean, mean - mu2, sigma2


def frechet_resamples_gram(features, mu2, sigma2, indices: np.ndarray, *, device="cpu") -> np.ndarray:
    """Fréchet distance of each resample ``features[indices[b]]`` to N(mu2, sigma2) by N x N matrices."""
    f0, shift, sigma2 = _prepare(features, mu2, sigma2, device)
    n = f0.shape[0]
    k = f0 @ sigma2 @ f0.T
    gram = f0 @ f0.T
    counts = torch.as_tensor(resample_counts(np.asarray(indices), n), device=device, dtype=torch.float64)
    # Mean and trace terms from the counts: the resample mean of the centred rows is m_b = c_b F0 / N.
    mean_sq = ((counts @ gram) * counts).sum(dim=1) / n**2                 # |m_b|^2
    trace_s = (counts @ torch.diagonal(gram) - n * mean_sq) / (n - 1)       # Tr S_b
    mean_term = mean_sq + 2 * (counts @ (f0 @ shift)) / n + shift @ shift   # |m_b + mean - mu2|^2
    k_means = counts @ k / n   # (K c_b / N)_i = F0_i S2 m_b
    chunk = max(1, _GATHER_BYTES // (8 * n * n))
    tr_sqrt = []
    for c, means in zip(counts.split(chunk), k_means.split(chunk)):
        # Distinct drawn rows first (zero-count padding after them, to a common width).
        width = int((c > 0).sum(dim=1).max())
        rows = torch.argsort((c == 0).to(torch.int8), dim=1, stable=True)[:, :width]
        weight = torch.gather(c, 1, rows)
        sub = k[rows[:, :, None], rows[:, None, :]]
        row = torch.gather(means, 1, rows)
        grand = (weight * row).sum(dim=1) / n
        sub.sub_(row[:, :, None]).sub_(row[:, None, :]).add_(grand[:, None, None])  # (Y S2 Y^T), Y = F_U - m_b
        root = weight.sqrt()
        sub.mul_(root[:, :, None]).mul_(root[:, None, :]).div_(n - 1)
        tr_sqrt.append(_sqrt_eig_sums(sub))
    if not tr_sqrt:
        return np.zeros(0)
    return (mean_term + trace_s + torch.trace(sigma2) - 2 * torch.cat(tr_sqrt)).cpu().numpy()


def frechet_resamples_cov(features, mu2, sigma2, indices: np.ndarray, *, device="cpu") -> np.ndarray:
    """Fréchet distance of each resample ``features[indices[b]]`` to N(mu2, sigma2) by D x D matrices."""
    f0, shift, sigma2 = _prepare(features, mu2, sigma2, device)
    n = f0.shape[0]
    w, v = torch.linalg.eigh((sigma2 + sigma2.T) / 2)
    root2 = (v * w.clamp(min=0).sqrt()) @ v.T
    h = f0 @ root2
    row_sq = (f0 * f0).sum(dim=1)
    const = float(torch.trace(sigma2))
    counts = torch.as_tensor(resample_counts(np.asarray(indices), n), device=device, dtype=torch.float64)
    out = []
    for c in counts:
        mean0 = c @ f0 / n
        hb = mean0 @ root2
        drawn = c.nonzero().squeeze(1)
        hd = h[drawn]
        m = (hd * c[drawn, None]).T @ hd - n * torch.outer(hb, hb)
        tr_sqrt = _sqrt_eig_sums(m / (n - 1))
        trace_s = (c @ row_sq - n * (mean0 @ mean0)) / (n - 1)
        mean_term = (mean0 + shift) @ (mean0 + shift)
        out.append(mean_term + trace_s + const - 2 * tr_sqrt)
    return torch.stack(out).cpu().numpy() if out else np.zeros(0)


def frechet_resamples(features, mu2, sigma2, indices: np.ndarray, *, device="cpu") -> np.ndarray:
    """Fréchet distance per resample, by the N x N path when N <= D and the D x D path otherwise."""
    n, d = features.shape
    path = frechet_resamples_gram if n <= d else frechet_resamples_cov
    return path(features, mu2, sigma2, indices, device=device)


def precision_resamples(membership: ManifoldMembership, indices: np.ndarray) -> np.ndarray:
    """Precision per resample: the mean of the drawn generated samples' inside-real-manifold indicators."""
    inside = membership.inside_real.cpu().numpy().astype(np.float64)
    return inside[np.asarray(indices)].mean(axis=1)


def recall_resamples(membership: ManifoldMembership, indices: np.ndarray, *, device="cpu") -> np.ndarray:
    """Recall per resample: fraction of real samples inside the (full-set radius) ball of a drawn generated sample."""
    g = membership.num_generated
    covered = membership.covered_packed.to(device)
    drawn = torch.zeros((len(indices), g), dtype=torch.bool, device=device)
    if len(indices):
        drawn.scatter_(1, torch.as_tensor(np.asarray(indices), device=device), True)
    drawn = pack_bits(drawn)  # (B, ceil(G / 8))
    hits = torch.zeros(len(indices), dtype=torch.int64, device=device)
    width = covered.shape[1]
    b_chunk = 64
    r_chunk = max(1, _RECALL_BYTES // (width * b_chunk))  # (r_chunk, b_chunk, width) bytes per step
    for b0 in range(0, len(indices), b_chunk):
        d = drawn[b0 : b0 + b_chunk]
        for rows in covered.split(r_chunk):
            hits[b0 : b0 + b_chunk] += ((rows[:, None, :] & d[None, :, :]) != 0).any(dim=2).sum(dim=0)
    return hits.cpu().numpy() / covered.shape[0]
