"""Datasets: embedded digits, ADM center crop, imagefolder layouts and errors, registry."""
import numpy as np
import pytest
import torch
from PIL import Image

from benchmark.data import (DATASETS, ImageFolderError, UnreadableImageError, build_dataset, center_crop_arr)


# ---------------------------------------------------------------- digits
@pytest.fixture(scope="module")
def digits8():
    return build_dataset("digits", image_size=8)


def test_digits_shape_classes_balance(digits8):
    assert len(digits8) == 1797
    assert (digits8.num_classes, digits8.channels, digits8.image_size) == (10, 1, 8)
    image, label = digits8[0]
    assert image.dtype == torch.uint8 and image.shape == (1, 8, 8)
    assert isinstance(label, int) and 0 <= label < 10
    counts = np.bincount(digits8.labels, minlength=10)
    assert counts.sum() == 1797 and counts.min() >= 170 and counts.max() <= 190


def test_digits_range_matches_raw_sklearn(digits8):
    from sklearn.datasets import load_digits
    raw = load_digits().images  # 0..16 floats
    expected = np.floor(raw * 255 / 16 + 0.5).astype(np.uint8)  # round-half-up, independent of np.rint
    got = digits8.images_uint8()
    assert got.shape == (1797, 8, 8, 1) and got.dtype == np.uint8
    np.testing.assert_array_equal(got[..., 0], expected)
    assert got.min() == 0 and got.max() == 255
    np.testing.assert_array_equal(digits8.images_uint8(5), got[:5])


@pytest.mark.parametrize("size", [16, 32])
def test_digits_resized_is_bilinear_of_native(digits8, size):
    ds = build_dataset("digits", image_size=size)
    assert ds.image_size == size and ds[3][0].shape == (1, size, size)
    native = digits8.images_uint8(4)[..., 0]
    for i in range(4):
        ref = np.asarray(Image.fromarray(native[i]).resize((size, size), Image.BILINEAR))
        np.testing.assert_array_equal(ds.images_uint8(4)[i, ..., 0], ref)
    assert ds.key != digits8.key


def test_digits_bad_size():
    with pytest.raises(ValueError, match=r"image_size=12.*\(8, 16, 32\)"):
        build_dataset("digits", image_size=12)


def test_random_flip_option():
    ds = build_dataset("digits", image_size=8, random_flip=True)
    torch.manual_seed(0)
    seen = {bool(torch.equal(ds[7][0], ds.load(7)[0].flip(-1))) for _ in range(40)}
    assert seen == {True, False}  # flipped sometimes, unflipped other times (digit 7 is not symmetric)


def test_unknown_dataset_lists_valid():
    with pytest.raises(ValueError, match="unknown dataset 'cifar'.*digits.*imagefolder"):
        build_dataset("cifar", image_size=32)
    assert {"digits", "imagefolder", "imagenet", "ffhq"} <= set(DATASETS)


# ---------------------------------------------------------------- center crop
def _box_halve(a: np.ndarray) -> np.ndarray:
    # A 2x BOX downscale is a separable pair of 2-tap means (horizontal pass first), each rounded half up
    # to 8 bits, which is how PIL's two-pass resampler quantises between passes.
    a = a.astype(np.float64)
    h = np.floor((a[:, 0::2] + a[:, 1::2]) / 2 + 0.5)
    return np.floor((h[0::2] + h[1::2]) / 2 + 0.5)


def test_center_crop_box_halvings_match_block_means():
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, size=(256, 256), dtype=np.uint8)
    out = np.asarray(center_crop_arr(Image.fromarray(arr), 64)).astype(np.float64)
    expected = _box_halve(_box_halve(arr))  # 256 -> 128 -> 64, then no resize/crop needed
    assert out.shape == (64, 64)
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("wh,size", [((600, 200), 64), ((200, 600), 64), ((300, 257), 32), ((70, 50), 64)])
def test_center_crop_sizes_and_centering(wh, size):
    w, h = wh
    arr = np.zeros((h, w, 3), dtype=np.uint8)
    s = min(w, h)
    top, left = (h - s) // 2, (w - s) // 2
    arr[top:top + s, left:left + s] = 255  # the central square is white, the strips outside it black
    out = np.asarray(center_crop_arr(Image.fromarray(arr), size))
    assert out.shape == (size, size, 3)
    # The crop is the central square: away from the one-pixel filter fringe at the borders it is all white.
    assert out[2:-2, 2:-2].min() >= 250


def test_center_crop_known_pattern_ends_centered():
    arr = np.zeros((400, 640), dtype=np.uint8)
    arr[180:220, 300:340] = 255  # a 40x40 square at the exact centre (200, 320)
    out = np.asarray(center_crop_arr(Image.fromarray(arr), 50)).astype(np.float64)
    ys, xs = np.mgrid[0:50, 0:50]
    cy, cx = (out * ys).sum() / out.sum(), (out * xs).sum() / out.sum()
    assert abs(cy - 24.5) < 0.6 and abs(cx - 24.5) < 0.6
    # Independent size arithmetic: 400x640 -> one halving (200 >= 100) -> 200x320 -> scale 0.25 -> 50x80.
    assert abs(out.sum() / 255 - 40 * 40 / 64) < 3  # square covers (40/8)^2 = 25 pixels' worth of mass


# ---------------------------------------------------------------- imagefolder
def _save(path, color, size=(40, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


@pytest.fixture()
def class_tree(tmp_path):
    for c, color in [("zebra", (255, 0, 0)), ("apple", (0, 255, 0))]:
        for i in range(3):
            _save(tmp_path / c / f"{i}.png", color)
    _save(tmp_path / "apple" / "nested" / "x.jpg", (0, 255, 0))
    (tmp_path / "apple" / "notes.txt").write_text("not an image")
    return tmp_path


def test_imagefolder_classes(class_tree):
    ds = build_dataset("imagefolder", path=str(class_tree), image_size=16)
    assert ds.num_classes == 2 and ds.classes == ["apple", "zebra"] and len(ds) == 7
    assert list(ds.labels) == [0, 0, 0, 0, 1, 1, 1]
    image, label = ds.load(6)
    assert image.shape == (3, 16, 16) and image.dtype == torch.uint8 and label == 1
    assert torch.all(image[0] == 255) and torch.all(image[1] == 0)  # zebra is red
    assert ds.images_uint8(2).shape == (2, 16, 16, 3)


def test_imagefolder_flat_unconditional_and_key(tmp_path):
    for i in range(4):
        _save(tmp_path / f"{i:05d}.png", (i * 50, 0, 0))
    ds = build_dataset("imagefolder", path=str(tmp_path), image_size=8)
    assert ds.num_classes == 0 and len(ds) == 4 and set(ds.labels) == {0}
    key = ds.key
    _save(tmp_path / "00004.png", (9, 9, 9))
    assert build_dataset("imagefolder", path=str(tmp_path), image_size=8).key != key


def test_ffhq_nested_is_unconditional(tmp_path):
    for d in ("00000", "01000"):
        _save(tmp_path / d / "a.png", (1, 2, 3))
    ds = build_dataset("ffhq", path=str(tmp_path), image_size=8)
    assert ds.num_classes == 0 and len(ds) == 2


def test_imagenet_requires_its_class_count(class_tree):
    from benchmark.config import compose
    from benchmark.data import from_config

    cfg = compose(["data=imagenet", f"data.path={class_tree}", "recipe=none", "data.image_size=16"])
    with pytest.raises(ImageFolderError, match="data.num_classes=1000 but .* gives 2 class folders.*data.classes=N"):
        from_config(cfg.data)
    sub = compose(["data=imagenet", f"data.path={class_tree}", "recipe=none", "data.image_size=16", "data.classes=1"])
    assert sub.data.num_classes == 1 and from_config(sub.data).num_classes == 1


def test_imagefolder_finds_its_classes_on_disk_and_keeps_a_subset(class_tree, tmp_path):
    from benchmark.config import compose
    from benchmark.data import from_config

    base = ["data=imagefolder", f"data.path={class_tree}", "data.image_size=16"]
    cfg = compose(base)
    full = from_config(cfg.data)
    assert cfg.data.num_classes == full.num_classes == 2 and cfg.recipe is None
    named = from_config(compose([*base, f"data.classes=[{full.classes[1]}]"]).data)
    assert named.classes == [full.classes[1]] and set(named.labels.tolist()) == {0}
    assert len(named) == int((full.labels == 1).sum())
    with pytest.raises(ImageFolderError, match="data.classes names folders that .* does not have: nope"):
        from_config(compose([*base, "data.classes=[nope]"]).data)
    flat = tmp_path / "flat"
    flat.mkdir()
    (class_tree / full.classes[0]).rename(flat / "x")        # a flat folder of images: unconditional
    for f in (flat / "x").iterdir():
        f.rename(flat / f.name)
    flat_cfg = compose(["data=imagefolder", f"data.path={flat}", "data.image_size=16", "sample.cfg_scale=1.0"])
    assert flat_cfg.data.num_classes == 0


def test_imagefolder_missing_path(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match=f"'{missing}' does not exist.*data.path="):
        build_dataset("imagefolder", path=str(missing), image_size=8)
    with pytest.raises(FileNotFoundError, match="no dataset path"):
        build_dataset("imagefolder", image_size=8)


def test_imagefolder_empty(tmp_path):
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(ImageFolderError, match=f"no images with extensions .*'{tmp_path}'"):
        build_dataset("imagefolder", path=str(tmp_path), image_size=8)
    (tmp_path / "cls").mkdir()
    with pytest.raises(ImageFolderError, match="class folder .*cls' has no images"):
        build_dataset("imagefolder", path=str(tmp_path), image_size=8, class_folders=True)


def test_imagefolder_unreadable_file(class_tree):
    bad = class_tree / "apple" / "broken.png"
    bad.write_bytes(b"definitely not a png")
    ds = build_dataset("imagefolder", path=str(class_tree), image_size=8)
    index = ds.files.index(str(bad))
    with pytest.raises(UnreadableImageError, match=f"cannot read image file '{bad}'"):
        ds.load(index)
    with pytest.raises(UnreadableImageError, match="broken.png"):
        ds.validate()
    ds.validate([i for i in range(len(ds)) if i != index])  # the good files pass


def test_imagefolder_bad_option(class_tree):
    with pytest.raises(ImageFolderError, match="class_folders='yes' is invalid"):
        build_dataset("imagefolder", path=str(class_tree), image_size=8, class_folders="yes")
