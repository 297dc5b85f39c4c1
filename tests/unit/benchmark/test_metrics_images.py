"""Sample sources: .npz streaming, PNG folders, arrays, and their input errors."""
import numpy as np
import pytest
from PIL import Image

from benchmark.metrics.images import ArraySource, FolderSource, NpzSource, open_images


def collect(src, batch_size=3, start=0, stop=None):
    stop = len(src) if stop is None else stop
    return np.concatenate(list(src.batches(start, stop, batch_size)))


@pytest.mark.parametrize("compressed", [False, True])
def test_npz_streaming_equals_full_load(tmp_path, compressed):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (11, 5, 4, 3), dtype=np.uint8)
    path = tmp_path / "s.npz"
    (np.savez_compressed if compressed else np.savez)(path, arr_0=arr)
    src = open_images(path)
    assert isinstance(src, NpzSource) and len(src) == 11 and src.image_shape == (5, 4, 3)
    np.testing.assert_array_equal(collect(src), arr)
    np.testing.assert_array_equal(collect(src, 4, start=5, stop=9), arr[5:9])  # a shard in the middle
    np.testing.assert_array_equal(collect(src.take(7)), arr[:7])


def test_grayscale_is_replicated(tmp_path):
    arr = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    for variant in (arr, arr[..., None]):
        out = collect(ArraySource(variant))
        assert out.shape == (2, 3, 3, 3)
        for c in range(3):
            np.testing.assert_array_equal(out[..., c], arr)
    np.savez(tmp_path / "g.npz", arr_0=arr[..., None])
    assert collect(open_images(tmp_path / "g.npz")).shape == (2, 3, 3, 3)


def test_folder_natural_order_and_rgb(tmp_path):
    rng = np.random.default_rng(1)
    arrs = {}
    for i in (10, 2, 1):
        a = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
        Image.fromarray(a).save(tmp_path / f"{i}.png")
        arrs[i] = a
    Image.fromarray(rng.integers(0, 256, (6, 5), dtype=np.uint8)).save(tmp_path / "11.png")  # grayscale PNG
    src = open_images(tmp_path)
    assert isinstance(src, FolderSource) and len(src) == 4
    out = collect(src, 2)
    np.testing.assert_array_equal(out[:3], np.stack([arrs[1], arrs[2], arrs[10]]))
    assert out.shape == (4, 6, 5, 3)
    assert (out[3, ..., 0] == out[3, ..., 2]).all()


def test_folder_mixed_sizes(tmp_path):
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((5, 4, 3), np.uint8)).save(tmp_path / "b.png")
    with pytest.raises(ValueError, match="mixed image sizes.*b.png"):
        open_images(tmp_path)


def test_folder_unreadable_png_named(tmp_path):
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="broken.png"):
        open_images(tmp_path)


def test_folder_truncated_png_named_at_decode(tmp_path):
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    data = (tmp_path / "a.png").read_bytes()
    (tmp_path / "b.png").write_bytes(data[: len(data) // 2])  # header fine, pixel data cut
    src = open_images(tmp_path)
    with pytest.raises(ValueError, match="b.png"):
        collect(src)


def test_take_more_than_available():
    src = ArraySource(np.zeros((3, 2, 2, 3), np.uint8))
    with pytest.raises(ValueError, match="num_fid_samples=5 but only 3"):
        src.take(5)


@pytest.mark.parametrize(
    "arr, match",
    [
        (np.zeros((2, 4, 4, 3), np.float32), "dtype float32"),
        (np.zeros((2, 4, 4, 2), np.uint8), "shape"),
        (np.zeros((4, 4), np.uint8), "shape"),
    ],
)
def test_bad_arrays(arr, match):
    with pytest.raises(ValueError, match=match):
        open_images(arr)


def test_bad_paths(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        open_images(tmp_path / "missing.npz")
    np.savez(tmp_path / "wrong.npz", images=np.zeros((2, 2, 2, 3), np.uint8))
    with pytest.raises(ValueError, match="no 'arr_0'.*images"):
        open_images(tmp_path / "wrong.npz")
    np.savez(tmp_path / "f.npz", arr_0=np.zeros((2, 2, 2, 3), np.float32))
    with pytest.raises(ValueError, match="float32"):
        open_images(tmp_path / "f.npz")
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(ValueError, match="npz file or a folder"):
        open_images(tmp_path / "x.txt")
    with pytest.raises(TypeError, match="samples must be"):
        open_images(42)
