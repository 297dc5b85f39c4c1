"""Reference statistics and features: an ADM reference batch ``.npz`` or a dataset's own images.

ADM reference batches (Dhariwal & Nichol 2021; e.g. ``VIRTUAL_imagenet256_labeled.npz``)
hold ``mu``/``sigma`` (pool_3 Gaussian, used for FID as stored), ``mu_s``/``sigma_s``
(spatial Gaussian, used for sFID) and the reference images ``arr_0`` (used for
Precision/Recall, KID and clean-FID, whose features are extracted here).

A ``DatasetReference`` names a dataset (``key``, e.g. ``"digits-8"``) and supplies
its images on demand; its features are extracted once and cached.

Cache files live in ``cache_dir``, are keyed by the reference (dataset key and
resolution, or the ``.npz`` content hash), the feature group and the weights'
sha256, and are written atomically (temp file + ``os.replace``).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..atomic import atomic_write
from .extractor import POOL3_DIM, SPATIAL_DIM
from .images import ArraySource, ImageSource, NpzSource
from .weights import file_sha256

CACHE_VERSION = "v1"

# Which reference arrays each metric needs from an ADM .npz.
NPZ_KEYS_FOR_METRIC = {
    "fid": ("mu", "sigma"),
    "sfid": ("mu_s", "sigma_s"),
    "precision_recall": ("arr_0",),
    "kid": ("arr_0",),
    "fid_clean": ("arr_0",),
    "is": (),
}
_STAT_DIMS = {"mu": POOL3_DIM, "sigma": POOL3_DIM, "mu_s": SPATIAL_DIM, "sigma_s": SPATIAL_DIM}


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
        if isinstance(reference, DatasetReference):
            self.kind = "dataset"
            self.dataset = reference
            res = f"-{reference.image_size}px" if reference.image_size else ""
            self.key = f"{reference.key}{res}"
            self.description = f"dataset {reference.key}" + (f" at {reference.image_size}px" if reference.image_size else "")
            self._source: ImageSource | None = None
        elif isinstance(reference, (str, os.PathLike)):
            self.kind = "adm-npz"
            self.path = Path(reference)
            self._open_npz(metrics)
        else:
            raise TypeError(
                f"reference must be an ADM .npz path or a DatasetReference, got {type(reference).__name__}"
            )

    # ------------------------------------------------------------- ADM npz
    def _open_npz(self, metrics: tuple[str, ...]) -> None:
        if not self.path.is_file() or self.path.suffix != ".npz":
            raise ValueError(f"reference {str(self.path)!r} is not an existing .npz file")
        try:
            with np.load(self.path, allow_pickle=False) as data:
                keys = set(data.files)
                needed = {k for m in metrics for k in NPZ_KEYS_FOR_METRIC[m]}
                missing = sorted(needed - keys)
                if missing:
                    users = sorted(m for m in metrics if set(NPZ_KEYS_FOR_METRIC[m]) & set(missing))
                    raise ValueError(
                        f"reference {str(self.path)!r} lacks keys {missing} needed by metrics {users} (has {sorted(keys)})"
                    )
                for k in sorted(needed - {"arr_0"}):
                    arr = np.asarray(data[k], dtype=np.float64)
                    want = (_STAT_DIMS[k],) if k.startswith("mu") else (_STAT_DIMS[k],) * 2
                    if arr.shape != want:
                        raise ValueError(f"reference {str(self.path)!r}[{k!r}] has shape {arr.shape}, expected {want}")
                    self._arrays[k] = arr
        except (OSError, EOFError) as exc:
            raise ValueError(f"reference {str(self.path)!r} is not a readable .npz file: {exc}") from exc
        self._source = NpzSource(self.path, "arr_0") if "arr_0" in keys else None
        digest = file_sha256(self.path)
        self.key = f"adm-{self.path.stem}-{digest[:16]}"
        self.description = f"ADM reference batch {self.path.name} (sha256 {digest[:12]})"
        self.sha256 = digest

    # ------------------------------------------------------------- access
    def source(self) -> ImageSource:
        if self._source is None:
            if self.kind == "dataset":
                images = self.dataset.images()
                self._source = ArraySource(images, f"reference {self.dataset.key}")
            else:
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
        """(mu, sigma) for ``pool3``, ``spatial`` or ``clean``; the .npz's own stats take precedence."""
        npz_keys = {"pool3": ("mu", "sigma"), "spatial": ("mu_s", "sigma_s")}.get(name)
        if npz_keys and npz_keys[0] in self._arrays:
            return self._arrays[npz_keys[0]], self._arrays[npz_keys[1]]
        group = "clean" if name == "clean" else "inception"
        arrays = self.group(group, extract)
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
