"""The embedded default dataset: scikit-learn's `load_digits` (UCI optical handwritten digits).

1797 grayscale 8x8 images with values 0..16 and 10 classes (about 180 per class). It ships inside the
scikit-learn wheel, so nothing is downloaded. Pixels map to uint8 by round(v * 255 / 16). Sizes 16 and
32 are produced by a PIL BILINEAR resize of the uint8 image (bilinear rather than bicubic: no ringing
overshoot on these tiny, high-contrast strokes); 8 is the native resolution.
"""
from __future__ import annotations

import numpy as np
import torch

from .base import ImageDataset
from .transforms import resize_square_uint8

DIGITS_SIZES = (8, 16, 32)
DIGITS_MAX_VALUE = 16


def digits_uint8(image_size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, S, S) uint8, labels (N,) int64) for S = image_size."""
    if image_size not in DIGITS_SIZES:
        raise ValueError(f"digits: image_size={image_size!r} is not supported; valid sizes are {DIGITS_SIZES}")
    from sklearn.datasets import load_digits  # lazy: sklearn import is slow and only this dataset needs it

    bunch = load_digits()
    raw = np.asarray(bunch.images, dtype=np.float64)
    images = np.rint(raw * (255.0 / DIGITS_MAX_VALUE)).clip(0, 255).astype(np.uint8)
    images = resize_square_uint8(images, image_size)
    return images, np.asarray(bunch.target, dtype=np.int64)


class DigitsDataset(ImageDataset):
    """scikit-learn digits, held in memory as one uint8 tensor."""

    def __init__(self, *, image_size: int = 8, random_flip: bool = False, path: str | None = None):
        if path:  # None or "" (an unset config key) both mean "no path"
            raise ValueError(f"digits: the dataset is embedded and takes no path, got path={path!r}")
        images, labels = digits_uint8(image_size)
        self._images = torch.from_numpy(images).unsqueeze(1)  # (N, 1, S, S)
        self._labels = labels
        self.name = "digits"
        self.image_size = image_size
        self.channels = 1
        self.num_classes = 10
        self.random_flip = bool(random_flip)
        self.key = f"digits-{image_size}px-bilinear"

    def __len__(self) -> int:
        return self._images.shape[0]

    def load(self, index: int) -> tuple[torch.Tensor, int]:
        return self._images[index].clone(), int(self._labels[index])

    @property
    def labels(self) -> np.ndarray:
        return self._labels.copy()

    def images_uint8(self, max_n: int | None = None) -> np.ndarray:
        n = self._count(max_n)
        return self._images[:n].permute(0, 2, 3, 1).numpy().copy()
