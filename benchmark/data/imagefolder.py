"""Images from a directory: class subfolders (ImageNet layout) or a flat/nested folder (unconditional, FFHQ).

Class mode follows torchvision's ImageFolder convention: every immediate subdirectory of `path` is a class,
class indices follow the sorted subdirectory names, images are found recursively inside each class folder.
Unconditional mode takes every image below `path` (recursively) with label 0 and `num_classes == 0`.
Each image is converted to RGB and preprocessed with the ADM center crop (`transforms.center_crop_arr`).
"""
from __future__ import annotations

import hashlib
import os

import numpy as np
import torch
from PIL import Image

from .base import ImageDataset
from .transforms import center_crop_arr

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
CLASS_FOLDER_MODES = ("auto", True, False)


class ImageFolderError(ValueError):
    """A dataset folder that cannot be used (empty, wrong class count, bad option)."""


class UnreadableImageError(ImageFolderError):
    """An image file that PIL cannot open or decode."""


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS)


def _walk_images(folder: str) -> list[str]:
    """All image files below folder, recursively, as sorted absolute paths (sorted for a stable order)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames.sort()
        found.extend(os.path.join(dirpath, f) for f in filenames if _is_image(f))
    return sorted(found)


def select_classes(names: list[str], classes, path: str) -> list[str]:
    """The class folders to keep: all (None), the first N in sorted order (an int), or the named ones."""
    if classes is None:
        return names
    if isinstance(classes, int) and not isinstance(classes, bool):
        if not 1 <= classes <= len(names):
            raise ImageFolderError(f"imagefolder: data.classes={classes} but '{path}' has {len(names)} class folders; "
                                   f"choose 1..{len(names)} or a list of folder names")
        return names[:classes]
    wanted = sorted(str(c) for c in classes)
    missing = [c for c in wanted if c not in set(names)]
    if missing or not wanted:
        raise ImageFolderError(f"imagefolder: data.classes names folders that '{path}' does not have: "
                               f"{', '.join(missing[:5]) or '(none given)'}; e.g. {', '.join(names[:3])}")
    return wanted


def count_classes(path, classes=None) -> int:
    """How many classes a folder gives, without reading any image: 0 for a flat folder (or none there)."""
    if classes is not None:
        return classes if isinstance(classes, int) else len(classes)
    if not path or not os.path.isdir(path):
        return 0
    entries = list(os.scandir(path))
    subdirs = [e for e in entries if e.is_dir()]
    if any(e.is_file() and _is_image(e.name) for e in entries):
        return 0
    return len(subdirs)


def check_has_images(path, classes=None) -> None:
    """A cheap look before anything is queued: the folder (or each class folder kept) holds an image.

    Stops at the first image of each, so a million-image folder costs a few directory reads."""
    if not path or not os.path.isdir(path):
        return  # the config check names a missing path
    entries = sorted(os.scandir(path), key=lambda e: e.name)
    subdirs = [e.name for e in entries if e.is_dir()]
    if any(e.is_file() and _is_image(e.name) for e in entries) or not subdirs:
        folders = [path]
    else:
        folders = [os.path.join(path, n) for n in select_classes(subdirs, classes, path)]
    for folder in folders:
        if not _first_image(folder):
            raise ImageFolderError(f"imagefolder: '{folder}' holds no images with extensions {IMG_EXTENSIONS}; "
                                   "check data.path (class folders of images, or a folder of images)")


def _first_image(folder: str) -> bool:
    for _dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        if any(_is_image(f) for f in filenames):
            return True
    return False


def scan_image_folder(path: str, class_folders="auto", classes=None) -> tuple[list[str], np.ndarray, list[str]]:
    """(files, labels, class_names) for `path`; class_names is [] in unconditional mode.

    ``classes`` keeps a subset of the class folders (see ``select_classes``); labels are their
    positions in sorted order.
    """
    if class_folders not in CLASS_FOLDER_MODES:
        raise ImageFolderError(f"imagefolder: class_folders={class_folders!r} is invalid; valid: {CLASS_FOLDER_MODES}")
    if not path:
        raise FileNotFoundError("imagefolder: no dataset path given; pass data.path=<folder of images or class subfolders>")
    if not os.path.isdir(path):
        raise FileNotFoundError(f"imagefolder: dataset path '{path}' does not exist or is not a directory; "
                                f"pass data.path=<folder of images or class subfolders>")
    entries = sorted(os.scandir(path), key=lambda e: e.name)
    subdirs = [e.name for e in entries if e.is_dir()]
    top_images = [e.name for e in entries if e.is_file() and _is_image(e.name)]
    if class_folders == "auto":
        # Only a folder made purely of subfolders reads as an ImageNet-style class layout.
        class_folders = bool(subdirs) and not top_images

    if not class_folders:
        files = _walk_images(path)
        if not files:
            raise ImageFolderError(f"imagefolder: no images with extensions {IMG_EXTENSIONS} found under '{path}'")
        return files, np.zeros(len(files), dtype=np.int64), []

    subdirs = select_classes(subdirs, classes, path)
    files, labels = [], []
    for label, name in enumerate(subdirs):
        class_files = _walk_images(os.path.join(path, name))
        if not class_files:
            raise ImageFolderError(f"imagefolder: class folder '{os.path.join(path, name)}' has no images with "
                                   f"extensions {IMG_EXTENSIONS}")
        files.extend(class_files)
        labels.extend([label] * len(class_files))
    if not files:
        raise ImageFolderError(f"imagefolder: no class subfolders with images found in '{path}'")
    return files, np.asarray(labels, dtype=np.int64), subdirs


def _unreadable(file: str, err: Exception) -> UnreadableImageError:
    detail = str(err).splitlines()[0] if str(err) else "no detail"
    return UnreadableImageError(f"imagefolder: cannot read image file '{file}' ({type(err).__name__}: {detail}); "
                                f"remove or replace it")


def read_rgb(file: str) -> Image.Image:
    """Open and fully decode an image as RGB; one-line UnreadableImageError naming the file on failure."""
    try:
        with Image.open(file) as im:
            return im.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError) as err:
        raise _unreadable(file, err) from None


def check_image_file(file: str, full: bool = False) -> None:
    """Cheap integrity check (header + PIL verify), or a full decode when full=True."""
    if full:
        read_rgb(file)
        return
    try:
        with Image.open(file) as im:
            im.verify()
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError) as err:
        raise _unreadable(file, err) from None


class ImageFolderDataset(ImageDataset):
    """Center-cropped RGB images from a folder; see the module docstring for the two layouts."""

    def __init__(self, *, path: str | None, image_size: int, class_folders="auto", num_classes: int | None = None,
                 classes=None, random_flip: bool = False, name: str = "imagefolder"):
        files, labels, classes = scan_image_folder(path, class_folders, classes)
        found = len(classes)
        if num_classes is not None and int(num_classes) != found:
            raise ImageFolderError(f"imagefolder: data.num_classes={num_classes} but '{path}' gives {found} class "
                                   f"folders" + (" (unconditional layout)" if found == 0 else "") +
                                   "; set data.num_classes to match, or data.classes=N for the first N classes")
        if not isinstance(image_size, int) or image_size < 1:
            raise ValueError(f"imagefolder: image_size must be a positive int, got {image_size!r}")
        self.root = os.path.abspath(path)
        self.files = files
        self.classes = classes
        self._labels = labels
        self.name = name
        self.image_size = image_size
        self.channels = 3
        self.num_classes = found
        self.random_flip = bool(random_flip)
        self.key = f"{name}-{image_size}px-admcrop-{'cls' if classes else 'flat'}-{len(files)}-{self._content_hash()}"

    def _content_hash(self) -> str:
        # Relative paths + sizes + class names: changes when files are added/removed/replaced, but not
        # when the folder is moved or copied (mtimes are deliberately ignored).
        h = hashlib.sha1()
        for f in self.files:
            h.update(os.path.relpath(f, self.root).encode())
            h.update(str(os.path.getsize(f)).encode())
        h.update("|".join(self.classes).encode())
        return h.hexdigest()[:12]

    def __len__(self) -> int:
        return len(self.files)

    def load(self, index: int) -> tuple[torch.Tensor, int]:
        image = center_crop_arr(read_rgb(self.files[index]), self.image_size)
        arr = np.asarray(image, dtype=np.uint8)
        return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous(), int(self._labels[index])

    @property
    def labels(self) -> np.ndarray:
        return self._labels.copy()

    def validate(self, indices=None, full: bool = False) -> None:
        """Raise UnreadableImageError naming the first unreadable file among `indices` (default: all)."""
        for i in range(len(self)) if indices is None else indices:
            check_image_file(self.files[i], full=full)
