"""Data: image datasets (registry), deterministic preprocessing, and the latent cache + batch sampler.

Typical use::

    ds = build_dataset("digits", image_size=8)
    ae = build_autoencoder("none", image_channels=ds.channels)     # benchmark.autoencoder
    lat = extract_latents(ds, ae, "cache/")                         # encoded once, then loaded
    x, y = lat.batch(indices_for_step(step, 32, seed=0, rank=0, world_size=1, num_items=len(lat)))
"""
from .base import ImageDataset
from .digits import DigitsDataset
from .imagefolder import IMG_EXTENSIONS, ImageFolderDataset, ImageFolderError, UnreadableImageError
from .latents import LatentSet, extract_latents, load_latents
from .registry import DATASETS, build_dataset, from_config
from .sampler import indices_for_step, steps_per_epoch
from .transforms import center_crop_arr

__all__ = [
    "DATASETS", "IMG_EXTENSIONS", "DigitsDataset", "ImageDataset", "ImageFolderDataset", "ImageFolderError",
    "LatentSet", "UnreadableImageError", "build_dataset", "center_crop_arr", "extract_latents",
    "from_config", "indices_for_step", "load_latents", "steps_per_epoch",
]
