"""Deterministic image preprocessing shared by the datasets.

`center_crop_arr` is the ADM preprocessing (Dhariwal & Nichol 2021, arXiv 2105.05233, used unchanged by
DiT, arXiv 2212.09748, for ImageNet): while the short side is at least twice the target, halve the image
with a BOX filter (cheap anti-aliasing for large downscales), then one BICUBIC resize so the short side
equals the target, then a center crop to a square. All functions are pure: image in, image out.
"""
from __future__ import annotations

import numpy as np
from PIL import Image


def _check_size(image_size: int) -> None:
    if not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < 1:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")


def center_crop_arr(image: Image.Image, image_size: int) -> Image.Image:
    """ADM center crop: BOX halvings, one BICUBIC resize to short side = image_size, center crop."""
    _check_size(image_size)
    # Halving with BOX averages exact 2x2 blocks; repeating it keeps the final bicubic step a small
    # (< 2x) downscale, which is where bicubic behaves well.
    while min(image.size) >= 2 * image_size:
        image = image.resize(tuple(s // 2 for s in image.size), resample=Image.BOX)
    scale = image_size / min(image.size)
    image = image.resize(tuple(round(s * scale) for s in image.size), resample=Image.BICUBIC)
    arr = np.asarray(image)
    top = (arr.shape[0] - image_size) // 2
    left = (arr.shape[1] - image_size) // 2
    return Image.fromarray(arr[top:top + image_size, left:left + image_size])


def resize_square_uint8(images: np.ndarray, image_size: int, resample: int = Image.BILINEAR) -> np.ndarray:
    """Resize a stack of square uint8 images (N, H, W) or (N, H, W, C) to image_size with PIL `resample`."""
    _check_size(image_size)
    if images.dtype != np.uint8:
        raise TypeError(f"resize_square_uint8 expects uint8 images, got dtype {images.dtype}")
    if images.shape[1] == image_size and images.shape[2] == image_size:
        return images.copy()
    out = [np.asarray(Image.fromarray(img).resize((image_size, image_size), resample=resample)) for img in images]
    return np.stack(out).astype(np.uint8)
