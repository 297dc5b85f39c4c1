"""The dataset interface every image source implements.

An `ImageDataset` yields `(uint8 tensor (C, H, W), int label)`; label 0 with `num_classes == 0` means
unconditional. `load(i)` is deterministic (the latent cache and FID reference use it); `__getitem__`
adds the optional random horizontal flip used when training on the fly without a latent cache.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset


class ImageDataset(Dataset):
    """Base class. Subclasses set the attributes below and implement `__len__`, `load` and `labels`."""

    name: str
    key: str  # identifies dataset + resolution + content-affecting options (used in cache keys)
    num_classes: int  # 0 = unconditional
    channels: int
    image_size: int
    random_flip: bool = False

    def __len__(self) -> int:
        raise NotImplementedError

    def load(self, index: int) -> tuple[torch.Tensor, int]:
        """Deterministic item: (uint8 (C, H, W), label)."""
        raise NotImplementedError

    @property
    def labels(self) -> np.ndarray:
        """All labels as an int64 array of length len(self), in index order."""
        raise NotImplementedError

    def validate(self, indices=None) -> None:
        """Fail early (one-line error naming the first bad item) before any long job; no-op if in memory."""

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, label = self.load(index)
        # torch's global RNG so DataLoader worker seeding governs it, as in torchvision's RandomHorizontalFlip.
        if self.random_flip and torch.rand(()) < 0.5:
            image = image.flip(-1)
        return image, label

    def images_uint8(self, max_n: int | None = None) -> np.ndarray:
        """The first max_n (default all) images as (N, H, W, C) uint8 — the FID reference set."""
        n = self._count(max_n)
        out = np.empty((n, self.image_size, self.image_size, self.channels), dtype=np.uint8)
        for i in range(n):
            out[i] = self.load(i)[0].permute(1, 2, 0).numpy()
        return out

    def _count(self, max_n: int | None) -> int:
        if max_n is None:
            return len(self)
        if int(max_n) < 0:
            raise ValueError(f"max_n must be >= 0 or None, got {max_n!r}")
        return min(int(max_n), len(self))

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, n={len(self)}, image_size={self.image_size}, "
                f"channels={self.channels}, num_classes={self.num_classes})")
