"""Dataset registry: name -> builder. `from_config` (a composed ``data`` section) and `build_dataset`
are the entry points the harness uses.

`imagenet` and `ffhq` are `imagefolder` with the layout fixed (class folders / unconditional,
nested folders allowed), so a config only has to name the data group and the path; the class
count comes from `data.num_classes` (1000 for ImageNet, or the subset `data.classes` keeps).
"""
from __future__ import annotations

from functools import partial

from kernels.registry import Registry

from .base import ImageDataset
from .digits import DigitsDataset
from .imagefolder import ImageFolderDataset

DATASETS = Registry("dataset", {
    "digits": DigitsDataset,
    "imagefolder": ImageFolderDataset,
    "imagenet": partial(ImageFolderDataset, class_folders=True, name="imagenet"),
    "ffhq": partial(ImageFolderDataset, class_folders=False, name="ffhq"),
}, sort_names=True)


# Dataset options a data config may carry, passed on to the datasets that take them.
CONFIG_OPTIONS = ("num_classes", "classes", "class_folders")


def from_config(data) -> ImageDataset:
    """The dataset a composed ``data`` section describes (path, size, and for image folders the classes)."""
    opts = {}
    if data.dataset != "digits":
        opts = {k: data.get(k) for k in CONFIG_OPTIONS if data.get(k) is not None}
        if "classes" in opts and not isinstance(opts["classes"], int):
            opts["classes"] = list(opts["classes"])
    return build_dataset(data.dataset, path=data.path, image_size=data.image_size, **opts)


def build_dataset(name: str, *, path: str | None = None, image_size: int, **opts) -> ImageDataset:
    """Build a registered dataset; `opts` go to the dataset class (e.g. random_flip, class_folders)."""
    return DATASETS.lookup(name)(path=path, image_size=image_size, **opts)
