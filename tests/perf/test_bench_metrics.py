"""pytest-benchmark cases for Inception feature extraction (the cost behind every metric).

Marked ``benchmark`` (skipped by the default test command); run with
``python -m pytest tests/perf/test_bench_metrics.py -m benchmark``. Each case
reports seconds per 1,000 images in ``extra_info`` and checks the features are
finite and 2048-d, so a fast but broken extractor fails.
"""
import numpy as np
import pytest
import torch

from benchmark.metrics.evaluate import get_extractor
from benchmark.metrics.extractor import resolve_device
from benchmark.metrics.weights import resolve_weights

pytestmark = pytest.mark.benchmark
DEVICE = resolve_device("auto")
NUM_IMAGES = 256 if DEVICE.type == "cuda" else 16


@pytest.fixture(scope="module")
def extractor():
    return get_extractor(resolve_weights(None), DEVICE)


@pytest.mark.parametrize("resolution", [8, 32, 256])
@pytest.mark.parametrize("kind", ["main", "clean"])
def test_bench_inception_features(benchmark, extractor, kind, resolution):
    images = np.random.default_rng(0).integers(0, 256, (NUM_IMAGES, resolution, resolution, 3), dtype=np.uint8)
    fn = extractor if kind == "main" else extractor.clean_pool3
    batch = 64 if DEVICE.type == "cuda" else 16

    def run():
        out = None
        for i in range(0, NUM_IMAGES, batch):
            out = fn(images[i : i + batch])
        if DEVICE.type == "cuda":
            torch.cuda.synchronize()
        return out

    fn(images[:2])  # warm-up
    out = benchmark.pedantic(run, rounds=2, iterations=1)
    feats = out["pool3"] if kind == "main" else out
    assert feats.shape[1] == 2048 and torch.isfinite(feats).all()
    benchmark.extra_info["seconds_per_1000_images"] = benchmark.stats.stats.median / NUM_IMAGES * 1000
    benchmark.extra_info["device"] = str(DEVICE)
    benchmark.extra_info["weights_source"] = extractor.weights.source
