"""Image sources for evaluation: ``.npz`` (``arr_0``), a folder of PNGs, or an in-memory array.

All sources yield uint8 NHWC RGB batches; grayscale (N, H, W) or (N, H, W, 1)
is replicated to three channels. ``.npz`` files are streamed from the zip
member batch by batch (the ADM evaluator reads its reference batches the same
way), so 50K samples never have to sit in memory at once. Bad input raises a
one-line ``ValueError`` naming the file, key or shape at fault.
"""
from __future__ import annotations

import os
import re
import zipfile
from pathlib import Path
from typing import Iterator

import numpy as np

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def to_rgb_uint8(images: np.ndarray, where: str = "images") -> np.ndarray:
    """Validate uint8 (N,H,W[,1|3]) and return (N,H,W,3), replicating a single channel."""
    if not isinstance(images, np.ndarray):
        raise TypeError(f"{where} must be a numpy array, got {type(images).__name__}")
    if images.dtype != np.uint8:
        raise ValueError(f"{where} have dtype {images.dtype}; expected uint8 in [0, 255]")
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"{where} have shape {images.shape}; expected (N, H, W), (N, H, W, 1) or (N, H, W, 3)")
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    return images


class ImageSource:
    """A fixed-length sequence of images read in batches."""

    description: str = ""

    def __len__(self) -> int:
        raise NotImplementedError

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of the stored images (C before RGB replication)."""
        raise NotImplementedError

    def batches(self, start: int, stop: int, batch_size: int) -> Iterator[np.ndarray]:
        raise NotImplementedError

    def take(self, n: int) -> "ImageSource":
        """The first ``n`` images; ``ValueError`` if fewer are available."""
        if n < 1:
            raise ValueError(f"num_fid_samples={n} must be a positive integer")
        if n > len(self):
            raise ValueError(f"num_fid_samples={n} but only {len(self)} images are in {self.description}")
        return _Prefix(self, n) if n < len(self) else self


class _Prefix(ImageSource):
    def __init__(self, base: ImageSource, n: int):
        self.base, self.n = base, n
        self.description = f"first {n} of {base.description}"

    def __len__(self) -> int:
        return self.n

    @property
    def image_shape(self):
        return self.base.image_shape

    def batches(self, start, stop, batch_size):
        return self.base.batches(start, min(stop, self.n), batch_size)


class ArraySource(ImageSource):
    def __init__(self, images: np.ndarray, description: str = "array"):
        self.images = to_rgb_uint8(images, description)
        self.stored_channels = 1 if images.ndim == 3 or images.shape[-1] == 1 else 3
        self.description = f"{description} of {len(self.images)} images {self.images.shape[1]}x{self.images.shape[2]}"

    def __len__(self):
        return len(self.images)

    @property
    def image_shape(self):
        return (*self.images.shape[1:3], self.stored_channels)

    def batches(self, start, stop, batch_size):
        for i in range(start, stop, batch_size):
            yield self.images[i : min(i + batch_size, stop)]


def _read_npy_header(fh) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(fh)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(fh)
    if version in ((2, 0), (3, 0)):
        return np.lib.format.read_array_header_2_0(fh)
    raise ValueError(f"unsupported .npy format version {version}")


class NpzSource(ImageSource):
    """Streams ``key`` (default ``arr_0``) of an ``.npz`` in batches without loading it whole."""

    def __init__(self, path: str | os.PathLike, key: str = "arr_0"):
        self.path, self.key = Path(path), key
        if not self.path.is_file():
            raise ValueError(f"samples file {str(self.path)!r} does not exist")
        try:
            with zipfile.ZipFile(self.path) as zf:
                names = zf.namelist()
                if f"{key}.npy" not in names:
                    found = sorted(n[:-4] for n in names if n.endswith(".npy"))
                    raise ValueError(f"{str(self.path)!r} has no {key!r} array (found {found})")
                with zf.open(f"{key}.npy") as fh:
                    shape, fortran, dtype = _read_npy_header(fh)
        except zipfile.BadZipFile as exc:
            raise ValueError(f"{str(self.path)!r} is not a readable .npz file") from exc
        if dtype != np.uint8 or len(shape) not in (3, 4) or (len(shape) == 4 and shape[-1] not in (1, 3)):
            raise ValueError(
                f"{str(self.path)!r}[{key!r}] has dtype {dtype} shape {shape}; expected uint8 (N, H, W[, 1|3])"
            )
        self.shape, self.fortran, self.dtype = tuple(shape), fortran, dtype
        self.description = f"{self.path.name}[{key}] ({shape[0]} images {shape[1]}x{shape[2]})"

    def __len__(self):
        return self.shape[0]

    @property
    def image_shape(self):
        return (self.shape[1], self.shape[2], self.shape[3] if len(self.shape) == 4 else 1)

    def batches(self, start, stop, batch_size):
        if self.fortran:  # rare; cannot be streamed row by row
            data = np.load(self.path, allow_pickle=False)[self.key]
            for i in range(start, stop, batch_size):
                yield to_rgb_uint8(np.ascontiguousarray(data[i : min(i + batch_size, stop)]), self.description)
            return
        per_image = int(np.prod(self.shape[1:])) * self.dtype.itemsize
        with zipfile.ZipFile(self.path) as zf, zf.open(f"{self.key}.npy") as fh:
            _read_npy_header(fh)
            _skip(fh, start * per_image, self.description)
            for i in range(start, stop, batch_size):
                count = min(batch_size, stop - i)
                data = bytearray(_read_exact(fh, count * per_image, self.description))  # writable for torch
                yield to_rgb_uint8(np.frombuffer(data, dtype=self.dtype).reshape(count, *self.shape[1:]), self.description)


def _read_exact(fh, size: int, where: str) -> bytes:
    parts, got = [], 0
    while got < size:
        chunk = fh.read(size - got)
        if not chunk:
            raise ValueError(f"{where}: file ended after {got} of {size} bytes")
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def _skip(fh, size: int, where: str, chunk: int = 1 << 24) -> None:
    while size > 0:
        size -= len(_read_exact(fh, min(chunk, size), where))


def _natural_key(path: Path):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]


class FolderSource(ImageSource):
    """Images in a folder (not recursive), in natural file-name order (2.png before 10.png)."""

    def __init__(self, path: str | os.PathLike):
        from PIL import Image

        self.path = Path(path)
        files = sorted((p for p in self.path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS), key=_natural_key)
        if not files:
            raise ValueError(f"folder {str(self.path)!r} has no images ({', '.join(IMAGE_EXTENSIONS)})")
        size = None
        for f in files:  # header-only reads: catches unreadable files and mixed sizes before any compute
            try:
                with Image.open(f) as im:
                    this = im.size
            except Exception as exc:  # noqa: BLE001 - PIL raises many types for bad files
                raise ValueError(f"cannot read image {str(f)!r}: {exc}") from exc
            if size is None:
                size, first = this, f
            elif this != size:
                raise ValueError(
                    f"mixed image sizes: {str(f)!r} is {this[0]}x{this[1]} but {first.name} is {size[0]}x{size[1]}"
                )
        self.files = files
        self.size = size
        self.description = f"folder {self.path.name} ({len(files)} images {size[1]}x{size[0]})"

    def __len__(self):
        return len(self.files)

    @property
    def image_shape(self):
        return (self.size[1], self.size[0], 3)

    def batches(self, start, stop, batch_size):
        from PIL import Image

        for i in range(start, stop, batch_size):
            out = []
            for f in self.files[i : min(i + batch_size, stop)]:
                try:
                    with Image.open(f) as im:
                        out.append(np.asarray(im.convert("RGB"), dtype=np.uint8))
                except Exception as exc:  # noqa: BLE001
                    raise ValueError(f"cannot decode image {str(f)!r}: {exc}") from exc
            yield np.stack(out)


def open_images(samples, description: str = "samples") -> ImageSource:
    """An ``ImageSource`` for a path (``.npz`` or folder), a numpy array, or an existing source."""
    if isinstance(samples, ImageSource):
        return samples
    if isinstance(samples, np.ndarray):
        return ArraySource(samples, description)
    if isinstance(samples, (str, os.PathLike)):
        p = Path(samples)
        if p.is_dir():
            return FolderSource(p)
        if p.suffix == ".npz":
            return NpzSource(p)
        if not p.exists():
            raise ValueError(f"{description} path {str(p)!r} does not exist")
        raise ValueError(f"{description} path {str(p)!r} must be an .npz file or a folder of PNGs")
    raise TypeError(f"{description} must be an .npz path, a folder path or a uint8 NHWC array; got {type(samples).__name__}")
