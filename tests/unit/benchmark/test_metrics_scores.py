"""Metric math against closed forms and independent reference implementations written here."""
import numpy as np
import pytest
import scipy.linalg
import torch

from benchmark.metrics import scores


def ref_frechet(mu1, s1, mu2, s2):
    """Textbook Fréchet distance with scipy's general matrix square root."""
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    covmean = np.real(covmean)
    d = mu1 - mu2
    return float(d @ d + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def random_psd(rng, d, rank=None):
    a = rng.standard_normal((d, rank or d))
    return a @ a.T / (rank or d)


def test_frechet_closed_form_diagonal():
    rng = np.random.default_rng(0)
    d = 16
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    a, b = rng.uniform(0.1, 3, d), rng.uniform(0.1, 3, d)
    # For diagonal covariances: |mu1-mu2|^2 + sum (sqrt(a) - sqrt(b))^2
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    got = scores.frechet_distance(mu1, np.diag(a), mu2, np.diag(b))
    assert got == pytest.approx(expected, rel=1e-10)


def test_frechet_identical_is_zero_and_symmetric():
    rng = np.random.default_rng(1)
    mu, s = rng.standard_normal(8), random_psd(rng, 8)
    assert scores.frechet_distance(mu, s, mu, s) == pytest.approx(0, abs=1e-9)
    mu2, s2 = rng.standard_normal(8), random_psd(rng, 8)
    assert scores.frechet_distance(mu, s, mu2, s2) == pytest.approx(scores.frechet_distance(mu2, s2, mu, s), rel=1e-9)


@pytest.mark.parametrize("d", [5, 32])
def test_frechet_matches_scipy_sqrtm(d):
    rng = np.random.default_rng(d)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    s1, s2 = random_psd(rng, d), random_psd(rng, d)
    assert scores.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(ref_frechet(mu1, s1, mu2, s2), rel=1e-8)


@pytest.mark.parametrize("n", [6, 20, 200])  # below, near and above the feature dimension
def test_frechet_from_features_both_routes(n):
    rng = np.random.default_rng(n)
    d = 24
    x = rng.standard_normal((n, d)) * rng.uniform(0.5, 2, d) + 0.3
    y = rng.standard_normal((300, d))
    mu2, s2 = y.mean(0), np.cov(y, rowvar=False)
    expected = ref_frechet(x.mean(0), np.cov(x, rowvar=False), mu2, s2)
    got = scores.frechet_distance_features(torch.from_numpy(x).float(), mu2, s2)
    assert got == pytest.approx(expected, rel=1e-5)


def test_frechet_agrees_with_torch_fidelity_and_cleanfid():
    from cleanfid.fid import frechet_distance as clean_fd
    from torch_fidelity.metric_fid import fid_statistics_to_metric

    rng = np.random.default_rng(3)
    d = 40
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    s1, s2 = random_psd(rng, d, rank=10), random_psd(rng, d)  # a singular covariance, as with few samples
    ours = scores.frechet_distance(mu1, s1, mu2, s2)
    tf = fid_statistics_to_metric({"mu": mu1, "sigma": s1}, {"mu": mu2, "sigma": s2}, verbose=False)
    assert ours == pytest.approx(tf["frechet_inception_distance"], rel=1e-6)
    assert ours == pytest.approx(clean_fd(mu1, s1, mu2, s2), rel=1e-6)


def test_frechet_shape_mismatch():
    with pytest.raises(ValueError, match="do not match"):
        scores.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def brute_force_pr(gen, real, k):
    """Improved precision/recall (Kynkäänniemi et al. 2019) with explicit loops."""
    def radii(x):
        out = []
        for i in range(len(x)):
            d = sorted(np.linalg.norm(x - x[i], axis=1))
            out.append(d[k])  # d[0] is the point itself
        return np.array(out)

    r_real, r_gen = radii(real), radii(gen)
    prec = np.mean([any(np.linalg.norm(g - real[j]) <= r_real[j] for j in range(len(real))) for g in gen])
    rec = np.mean([any(np.linalg.norm(r - gen[j]) <= r_gen[j] for j in range(len(gen))) for r in real])
    return prec, rec


@pytest.mark.parametrize("batch_size", [7, 10000])
def test_precision_recall_brute_force(batch_size):
    rng = np.random.default_rng(4)
    real = rng.standard_normal((40, 5))
    gen = rng.standard_normal((30, 5)) * 1.5 + 0.7  # partly off the real manifold
    p, r = scores.precision_recall(torch.from_numpy(gen).float(), torch.from_numpy(real).float(), batch_size=batch_size)
    ep, er = brute_force_pr(gen.astype(np.float32).astype(np.float64), real.astype(np.float32).astype(np.float64), 3)
    assert (p, r) == (pytest.approx(ep), pytest.approx(er))
    assert 0 < p < 1 and 0 < r <= 1


def test_precision_recall_needs_more_than_k_rows():
    with pytest.raises(ValueError, match="more than k"):
        scores.precision_recall(torch.zeros(3, 4), torch.zeros(10, 4))


def independent_unbiased_mmd2(x, y):
    d = x.shape[1]
    k = lambda a, b: (a @ b.T / d + 1) ** 3
    m, n = len(x), len(y)
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    return ((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
            - 2 * kxy.mean())


def test_kid_matches_independent_mmd():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((50, 8))
    y = rng.standard_normal((50, 8)) + 0.5
    # subset size == set size: every subset is the whole set (permuted), so each MMD is the full-set MMD.
    mean, std, size = scores.kid(torch.from_numpy(x), torch.from_numpy(y), subsets=3)
    assert size == 50
    assert mean == pytest.approx(independent_unbiased_mmd2(x, y), rel=1e-4)
    assert std == pytest.approx(0, abs=1e-6)


def test_kid_same_distribution_near_zero():
    rng = np.random.default_rng(6)
    x, y = rng.standard_normal((200, 8)), rng.standard_normal((200, 8))
    far = rng.standard_normal((200, 8)) + 2
    near, _, _ = scores.kid(torch.from_numpy(x), torch.from_numpy(y), subsets=5, subset_size=100)
    away, _, _ = scores.kid(torch.from_numpy(x), torch.from_numpy(far), subsets=5, subset_size=100)
    assert abs(near) < 0.05 < away


def independent_inception_score(logits, splits):
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    out = []
    for part in np.array_split(p, splits):
        py = part.mean(0, keepdims=True)
        out.append(np.exp(np.mean(np.sum(part * (np.log(part) - np.log(py)), 1))))
    return np.mean(out), np.std(out)


def test_inception_score_independent():
    rng = np.random.default_rng(7)
    logits = rng.standard_normal((40, 12)) * 3
    mean, std = scores.inception_score(torch.from_numpy(logits), splits=4)
    emean, estd = independent_inception_score(logits, 4)
    assert mean == pytest.approx(emean, rel=1e-9) and std == pytest.approx(estd, rel=1e-6, abs=1e-9)


def test_inception_score_bounds():
    # one-hot confident predictions spread uniformly over C classes -> IS = C
    c = 5
    logits = torch.full((c * 4, c), -50.0)
    logits[torch.arange(c * 4), torch.arange(c * 4) % c] = 50.0
    mean, _ = scores.inception_score(logits, splits=1)
    assert mean == pytest.approx(c, rel=1e-6)


def test_gaussian_statistics_rejects_bad_shapes():
    with pytest.raises(ValueError, match="N >= 2"):
        scores.gaussian_statistics(np.zeros((1, 3)))
