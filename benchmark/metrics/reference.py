"""Reference statistics and features: an ADM reference batch ``.npz``, a folder of images, or a dataset.

ADM reference batches (Dhariwal & Nichol 2021; e.g. ``VIRTUAL_imagenet256_labeled.npz``)
hold ``mu``/``sigma`` (pool_3 Gaussian, used for FID as stored), ``mu_s``/``sigma_s``
(spatial Gaussian, used for sFID) and the reference images ``arr_0`` (used for
Precision/Recall, KID and clean-FID, whose features are extracted here). A file
may hold any subset: statistics it lacks are computed from ``arr_0``, as ADM's
own evaluator does; only a metric with neither its statistics nor ``arr_0`` is
refused.

A folder of images (``FolderSource``: PNG, JPEG, ...) is a reference like
``arr_0``. A ``DatasetReference`` names a dataset (``key``, e.g. ``"digits-8"``)
and supplies its images on demand. Images of any size serve: the extractor
resizes every image to the network's input (as for samples).

Computed features and statistics are cached in ``cache_dir``, keyed by the
reference (dataset key and resolution; the ``.npz`` content hash; or, for a
folder, the sha256 of its sorted file names, sizes and modification times),
the feature group and the weights' sha256, and written atomically.
"""
from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from methods.atomic import atomic_write
from .extractor import POOL3_DIM, SPATIAL_DIM
from .images import ArraySource, FolderSource, ImageSource, NpzSource
from .weights import file_sha256

CACHE_VERSION = "v1"

# Stored statistics an ADM .npz may hold, by the statistics they stand for.
NPZ_STATS = {"pool3": ("mu", "sigma"), "spatial": ("mu_s", "sigma_s")}
# Statistics a metric reads as stored when the .npz has them.
STATS_FOR_METRIC = {"fid": "pool3", "sfid": "spatial"}
# Each metric's alternative sets of .npz keys; any one of them suffices.
NPZ_KEYS_FOR_METRIC = {
    "fid": (("mu", "sigma"), ("arr_0",)),
    "sfid": (("mu_s", "sigma_s"), ("arr_0",)),
    "precision_recall": (("arr_0",),),
    "kid": (("arr_0",),),
    "fid_clean": (("arr_0",),),
    "is": ((),),
}
_STAT_DIMS = {"mu": POOL3_DIM, "sigma": POOL3_DIM, "mu_s": SPATIAL_DIM, "sigma_s": SPATIAL_DIM}


def folder_listing_sha256(files: list[Path]) -> str:
    """sha256 of the sorted (file name, size, mtime in ns) of ``files``: changes when any file is added, removed
    or rewritten, without reading the images."""
    h = hashlib.sha256()
    for f in sorted(files, key=lambda p: p.name):
        st = f.stat()
        h.update(f"{f.name}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


@dataclass(frozen=True)
class DatasetReference:
    """The dataset's own images as the reference; ``images()`` is only called on a cache miss."""

    key: str
    images: Callable[[], np.ndarray]
    image_size: int | None = None

    def __post_init__(self):
        if not isinstance(self.key, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._=+-]*", self.key):
            raise ValueError(f"DatasetReference key {self.key!r} must be a non-empty name of letters, digits and ._=+-")
        if not callable(self.images):
            raise TypeError(f"DatasetReference.images must be a callable returning uint8 NHWC images, got {self.images!r}")


def _atomic_savez(path: Path, arrays: dict[str, np.ndarray]) -> None:
    atomic_write(path, lambda tmp: np.savez(tmp, **arrays), suffix=".npz")


def _is_rank0() -> bool:
    dist = torch.distributed
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


class Reference:
    """Resolves what the metrics need from a reference, extracting and caching features on demand.

    ``extract(source, group)`` is supplied by the caller and returns a dict of
    tensors for an ``ImageSource``: group ``"inception"`` -> pool3 and spatial,
    ``"clean"`` -> clean pool3.
    """

    def __init__(self, reference, *, cache_dir: str | os.PathLike, weights_sha256: str, metrics: tuple[str, ...]):
        if cache_dir is None:
            raise ValueError("cache_dir is required: reference features are cached there")
        self.cache_dir = Path(cache_dir)
        self.weights_sha256 = weights_sha256
        self._arrays: dict[str, np.ndarray] = {}
        self.statistics: dict[str, str] = {}  # statistics name -> where its mu/sigma came from
        if isinstance(reference, DatasetReference):
            self.kind = "dataset"
            self.dataset = reference
            res = f"-{reference.image_size}px" if reference.image_size else ""
            self.key = f"{reference.key}{res}"
            self.description = f"dataset {reference.key}" + (f" at {reference.image_size}px" if reference.image_size else "")
            self._source: ImageSource | None = None
            self._images_name = f"dataset {reference.key}"
        elif isinstance(reference, (str, os.PathLike)):
            self.path = Path(reference)
            if self.path.is_dir():
                self._open_folder()
            elif self.path.is_file() and self.path.suffix == ".npz":
                self._open_npz(metrics)
            else:
                what = "does not exist" if not self.path.exists() else "is neither an .npz file nor a folder"
                raise ValueError(
                    f"reference {str(self.path)!r} {what}; pass an ADM reference batch .npz or a folder of images"
                )
        else:
            raise TypeError(
                f"reference must be an ADM .npz path, a folder of images or a DatasetReference, got {type(reference).__name__}"
            )

    # ------------------------------------------------------------- folder
    def _open_folder(self) -> None:
        self.kind = "folder"
        self._source = FolderSource(self.path)
        digest = folder_listing_sha256(self._source.files)
        self.key = f"folder-{self.path.name}-{digest[:16]}"
        h, w = self._source.image_shape[:2]
        self.description = f"image folder {self.path} ({len(self._source)} images {h}x{w})"
        self._images_name = "folder images"

    # ------------------------------------------------------------- ADM npz
    def _open_npz(self, metrics: tuple[str, ...]) -> None:
        self.kind = "adm-npz"
        try:
            with np.load(self.path, allow_pickle=False) as data:
                keys = set(data.files)
                has_images = "arr_0" in keys
                refused = [
                    f"{m} (needs {', or '.join(' and '.join(alt) for alt in NPZ_KEYS_FOR_METRIC[m])})"
                    for m in metrics if not any(set(alt) <= keys for alt in NPZ_KEYS_FOR_METRIC[m])
                ]
                if refused:
                    raise ValueError(f"reference {str(self.path)!r} cannot serve {', '.join(refused)}; it has {sorted(keys)}")
                stored = {STATS_FOR_METRIC[m] for m in metrics if m in STATS_FOR_METRIC}
                for k in (k for name in sorted(stored) for k in NPZ_STATS[name] if set(NPZ_STATS[name]) <= keys):
                    arr = np.asarray(data[k], dtype=np.float64)
                    want = (_STAT_DIMS[k],) if k.startswith("mu") else (_STAT_DIMS[k],) * 2
                    if arr.shape != want:
                        raise ValueError(f"reference {str(self.path)!r}[{k!r}] has shape {arr.shape}, expected {want}")
                    self._arrays[k] = arr  # stored statistics; absent pairs are computed from arr_0 when asked for
        except (OSError, EOFError) as exc:
            raise ValueError(f"reference {str(self.path)!r} is not a readable .npz file: {exc}") from exc
        self._source = NpzSource(self.path, "arr_0") if has_images else None
        digest = file_sha256(self.path)
        self.key = f"adm-{self.path.stem}-{digest[:16]}"
        self.description = f"ADM reference batch {self.path.name} (sha256 {digest[:12]})"
        self.sha256 = digest
        self._images_name = "arr_0"

    # ------------------------------------------------------------- access
    def source(self) -> ImageSource:
        if self._source is None:
            if self.kind == "dataset":
                images = self.dataset.images()
                self._source = ArraySource(images, f"reference {self.dataset.key}")
            else:  # the constructor refuses a metric that would get here
                raise ValueError(f"reference {str(self.path)!r} has no 'arr_0' images")
        return self._source

    @property
    def num_images(self) -> int | None:
        if self._source is not None:
            return len(self._source)
        n = self._arrays.get("num_images")
        return int(n) if n is not None else None

    def cache_path(self, group: str) -> Path:
        safe = re.sub(r"[^A-Za-z0-9._=+-]", "_", self.key)
        return self.cache_dir / f"inception-ref-{safe}-{group}-w{self.weights_sha256[:16]}-{CACHE_VERSION}.npz"

    def group(self, group: str, extract: Callable[[ImageSource, str], dict[str, torch.Tensor]]) -> dict[str, np.ndarray]:
        """Features/statistics of one group, from the cache or computed (and cached) now."""
        path = self.cache_path(group)
        if path.is_file():
            try:
                with np.load(path, allow_pickle=False) as data:
                    cached = {k: data[k] for k in data.files}
                self._arrays["num_images"] = cached["num_images"]
                return cached
            except (OSError, ValueError, KeyError, EOFError):
                pass  # a damaged cache file is recomputed and replaced
        source = self.source()
        feats = extract(source, group)
        arrays = _summarise(group, feats)
        arrays["num_images"] = np.asarray(len(source))
        if _is_rank0():
            _atomic_savez(path, arrays)
        self._arrays["num_images"] = arrays["num_images"]
        return arrays

    def stats(self, name: str, extract) -> tuple[np.ndarray, np.ndarray]:
        """(mu, sigma) for ``pool3``, ``spatial`` or ``clean``; an .npz's stored statistics take precedence.

        Records in ``self.statistics[name]`` whether they were stored or computed (and from how many images).
        """
        npz_keys = NPZ_STATS.get(name)
        if npz_keys and npz_keys[0] in self._arrays and npz_keys[1] in self._arrays:
            self.statistics[name] = f"stored {npz_keys[0]}/{npz_keys[1]}"
            return self._arrays[npz_keys[0]], self._arrays[npz_keys[1]]
        group = "clean" if name == "clean" else "inception"
        arrays = self.group(group, extract)
        self.statistics[name] = f"computed from {self._images_name} ({int(arrays['num_images'])} images)"
        return arrays[f"{name}_mu"], arrays[f"{name}_sigma"]

    def pool3_features(self, extract) -> torch.Tensor:
        return torch.from_numpy(self.group("inception", extract)["pool3"])


def _summarise(group: str, feats: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    from .scores import gaussian_statistics

    out: dict[str, np.ndarray] = {}
    if group == "inception":
        out["pool3"] = feats["pool3"].float().numpy()
        for name in ("pool3", "spatial"):
            mu, sigma = gaussian_statistics(feats[name])
            out[f"{name}_mu"], out[f"{name}_sigma"] = mu, sigma
    elif group == "clean":
        mu, sigma = gaussian_statistics(feats["clean"])
        out["clean_mu"], out["clean_sigma"] = mu, sigma
    else:
        raise ValueError(f"unknown feature group {group!r}; known: inception, clean")
    return out
