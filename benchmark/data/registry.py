"""Dataset registry: name -> builder. `build_dataset` is the only entry point the harness uses.

`imagenet` and `ffhq` are `imagefolder` with the layout fixed (1000 class folders / unconditional,
nested folders allowed), so a config only has to name the data group and the path.
"""
from __future__ import annotations

from functools import partial

from .base import ImageDataset
from .digits import DigitsDataset
from .imagefolder import ImageFolderDataset

DATASETS = {
    "digits": DigitsDataset,
    "imagefolder": ImageFolderDataset,
    "imagenet": partial(ImageFolderDataset, class_folders=True, num_classes=1000, name="imagenet"),
    "ffhq": partial(ImageFolderDataset, class_folders=False, name="ffhq"),
}


def build_dataset(name: str, *, path: str | None = None, image_size: int, **opts) -> ImageDataset:
    """Build a registered dataset; `opts` go to the dataset class (e.g. random_flip, class_folders)."""
    try:
        builder = DATASETS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown dataset {name!r}; valid names: {sorted(DATASETS)}") from None
    return builder(path=path, image_size=image_size, **opts)
