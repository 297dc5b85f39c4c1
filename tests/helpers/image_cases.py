"""Small in-memory image datasets and a noisy pixel-space autoencoder for the latent-cache tests."""
import torch

from benchmark.autoencoder import PixelSpace
from benchmark.data import ImageDataset


class NoisyToy(PixelSpace):
    """A stochastic 'encoder' (0.5 x + 0.1 noise) to check that noise is split-invariant under DDP."""

    stochastic = True

    def __init__(self):
        super().__init__(1)
        self.key = "noisy-toy"

    def encode(self, x, *, generator=None, noise=None):
        return 0.5 * x + 0.1 * noise

    def posterior(self, x):
        return 0.5 * x, 0.1 + 0.05 * x.abs()


class RandomImages(ImageDataset):
    """Seeded random uint8 images with labels, in memory (spawned workers build it without importing sklearn)."""

    def __init__(self, n, *, seed, channels, size, labels, name):
        g = torch.Generator().manual_seed(seed)
        self._images = torch.randint(0, 256, (n, channels, size, size), generator=g, dtype=torch.uint8)
        self._labels = labels(n, g)
        self.name, self.key, self.channels, self.image_size = name, f"{name}-{n}", channels, size
        self.num_classes = int(self._labels.max()) + 1

    def __len__(self):
        return len(self._images)

    def load(self, index):
        return self._images[index].clone(), int(self._labels[index])

    @property
    def labels(self):
        return self._labels.numpy().copy()


def TinyDataset(n=301):
    """1x8x8 images, three classes."""
    return RandomImages(n, seed=0, channels=1, size=8, name="tiny",
                        labels=lambda n, g: torch.randint(0, 3, (n,), generator=g))
