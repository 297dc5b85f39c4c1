"""Latent cache (create once, flips, atomic write, DDP-parallel extraction), the posterior mode
(cached mean/std, fresh draws), float16 storage, and the batch index sampler."""

import math
import os
import pytest
import torch
from image_cases import RandomImages
from benchmark.autoencoder import PixelSpace, build_autoencoder, from_uint8
from benchmark.data import build_dataset, extract_latents, indices_for_step, steps_per_epoch
from benchmark.data.latents import cache_key, cache_path
from vae_cases import tiny_sd_vae


class CountingPixels(PixelSpace):
    """Pixel space that counts encode calls and can fail on a chosen call."""

    def __init__(self, channels=1, fail_on_call=None):
        super().__init__(channels)
        self.calls, self.fail_on_call = 0, fail_on_call

    def encode(self, x, *, generator=None, noise=None):
        self.calls += 1
        if self.calls == self.fail_on_call:
            raise RuntimeError("encoder exploded")
        return super().encode(x)


@pytest.fixture(scope="module")
def digits():
    return build_dataset("digits", image_size=8)


def test_cache_created_once_and_reused(digits, tmp_path):
    ae = CountingPixels()
    first = extract_latents(digits, ae, str(tmp_path), batch_size=500)
    assert ae.calls == 2 * 4  # ceil(1797 / 500) batches, each encoded plain and flipped
    again = CountingPixels()
    second = extract_latents(digits, again, str(tmp_path), batch_size=500)
    assert again.calls == 0
    torch.testing.assert_close(first.latents, second.latents, rtol=0, atol=0)
    assert os.listdir(tmp_path) == [os.path.basename(cache_path(digits, ae, str(tmp_path)))]
    # A different option is a different cache entry.
    other = CountingPixels()
    extract_latents(digits, other, str(tmp_path), batch_size=500, flips=False)
    assert other.calls == 4 and len(os.listdir(tmp_path)) == 2


def test_flips_doubled_and_correct(digits, tmp_path):
    lat = extract_latents(digits, PixelSpace(1), str(tmp_path), batch_size=256)
    n = len(digits)
    images = torch.from_numpy(digits.images_uint8()).permute(0, 3, 1, 2)
    expected = images.float() / 255 * 2 - 1
    assert lat.latents.shape == (2 * n, 1, 8, 8) and lat.latents.dtype == torch.float32
    torch.testing.assert_close(lat.latents[:n], expected)
    torch.testing.assert_close(lat.latents[n:], expected.flip(-1))
    labels = torch.as_tensor(digits.labels)
    assert lat.labels.dtype == torch.int64 and torch.equal(lat.labels, torch.cat([labels, labels]))
    assert lat.num_classes == 10 and lat.flips and len(lat) == 2 * n

    no_flip = extract_latents(digits, PixelSpace(1), str(tmp_path), flips=False)
    assert len(no_flip) == n and torch.equal(no_flip.latents, lat.latents[:n])


def test_atomic_no_partial_file_when_encode_raises(digits, tmp_path):
    with pytest.raises(RuntimeError, match="encoder exploded"):
        extract_latents(digits, CountingPixels(fail_on_call=3), str(tmp_path), batch_size=400)
    assert os.listdir(tmp_path) == []
    ok = CountingPixels()
    extract_latents(digits, ok, str(tmp_path), batch_size=400)
    assert ok.calls > 0  # nothing stale was reused


def test_channel_mismatch_is_clear(digits, tmp_path):
    with pytest.raises(ValueError, match="1 channels but autoencoder 'none' expects 3"):
        extract_latents(digits, PixelSpace(3), str(tmp_path))


def test_unreadable_image_fails_before_encoding(tmp_path):
    from PIL import Image
    from benchmark.data import UnreadableImageError
    root = tmp_path / "imgs"
    root.mkdir()
    for i in range(3):
        Image.new("RGB", (10, 10), (i, i, i)).save(root / f"{i}.png")
    (root / "9_bad.png").write_bytes(b"\x89PNG broken")
    ds = build_dataset("imagefolder", path=str(root), image_size=8)
    ae = CountingPixels(channels=3)
    with pytest.raises(UnreadableImageError, match="9_bad.png"):
        extract_latents(ds, ae, str(tmp_path / "cache"))
    assert ae.calls == 0


# ---------------------------------------------------------------- posterior mode
def Rand32(n=5):
    """3x32x32 images, two classes."""
    return RandomImages(n, seed=2, channels=3, size=32, name="rand32", labels=lambda n, g: torch.arange(n) % 2)


@pytest.fixture(scope="module")
def vae():
    return tiny_sd_vae(in_channels=3)


def test_posterior_cache_is_the_vaes_posterior(vae, tmp_path):
    ds, scale = Rand32(), 0.18215
    ae = build_autoencoder("sd-vae", module=vae, scale=scale)
    lat = extract_latents(ds, ae, str(tmp_path), batch_size=2, mode="posterior")
    assert lat.mode == "posterior" and lat.latents.shape == lat.std.shape == (10, 4, 4, 4)
    x = from_uint8(ds._images)
    with torch.no_grad():
        plain, flipped = vae.encode(x).latent_dist, vae.encode(x.flip(-1)).latent_dist
    torch.testing.assert_close(lat.latents, scale * torch.cat([plain.mean, flipped.mean]), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(lat.std, scale * torch.cat([plain.std, flipped.std]), rtol=1e-5, atol=1e-6)
    assert torch.equal(lat.labels, torch.cat([ds._labels, ds._labels]))
    # Its own cache file, which the one-sample cache never reads (and vice versa); the seed plays no part.
    once = extract_latents(ds, ae, str(tmp_path), batch_size=2)
    assert once.mode == "sample_once" and once.std is None
    path = cache_path(ds, ae, str(tmp_path), mode="posterior")
    assert "-posterior-" in os.path.basename(path)
    assert sorted(os.listdir(tmp_path)) == sorted(os.path.basename(p) for p in (path, cache_path(ds, ae, str(tmp_path))))
    assert cache_key(ds, ae, True, 0, "posterior") == cache_key(ds, ae, True, 5, "posterior")
    assert cache_key(ds, ae, True, 0) != cache_key(ds, ae, True, 5)
    # The one-sample key is the one caches were written under before the posterior mode existed.
    assert cache_key(ds, ae, True, 0) == f"{ds.key}|{ae.key}|flips=True|seed=0|v1"


def test_posterior_draws_are_fresh_and_have_the_cached_moments(vae, tmp_path):
    lat = extract_latents(Rand32(), build_autoencoder("sd-vae", module=vae), str(tmp_path), mode="posterior")
    rows = torch.arange(len(lat))
    g = torch.Generator().manual_seed(0)
    first, second = lat.draw(rows, generator=g), lat.draw(rows, generator=g)
    assert first.dtype == torch.float32 and first.shape == lat.latents.shape
    assert bool((first != second).all())  # a new eps every draw
    n = 20_000
    draws = lat.draw(rows.repeat(n), generator=g).reshape(n, *lat.latents.shape).double()
    mean, std = lat.latents.double(), lat.std.double()
    # Every element: sample mean within 5 standard errors (std / sqrt(n)) of the cached mean, sample
    # variance within 5 standard errors (sqrt(2 / n) relative, Gaussian) of std**2. Over 640 elements a
    # 5-sigma excursion has probability ~4e-4 for a correct draw; a wrong scale or offset fails by far.
    assert bool(((draws.mean(0) - mean).abs() <= 5 * std / math.sqrt(n)).all())
    assert bool(((draws.var(0) / std ** 2 - 1).abs() <= 5 * math.sqrt(2 / n)).all())


def test_float16_storage_halves_the_cache_and_rounds_once(vae, tmp_path):
    ds, ae = Rand32(), build_autoencoder("sd-vae", module=vae)
    full = extract_latents(ds, ae, str(tmp_path), mode="posterior")
    half = extract_latents(ds, ae, str(tmp_path), mode="posterior", dtype="float16")
    assert half.latents.dtype == half.std.dtype == torch.float16
    assert torch.equal(half.latents, full.latents.half()) and torch.equal(half.std, full.std.half())
    assert half.draw(torch.arange(3)).dtype == torch.float32
    big = os.path.getsize(cache_path(ds, ae, str(tmp_path), mode="posterior"))
    small = os.path.getsize(cache_path(ds, ae, str(tmp_path), mode="posterior", dtype="float16"))
    assert len(os.listdir(tmp_path)) == 2
    tensor_bytes = 2 * full.latents.numel() * 4  # mean + std in float32
    assert big - small == pytest.approx(tensor_bytes / 2, abs=2048)  # the same file with 2-byte elements


def test_pixel_space_posterior_is_sample_once(digits, tmp_path):
    once = extract_latents(digits, PixelSpace(1), str(tmp_path), flips=False)
    post = extract_latents(digits, CountingPixels(), str(tmp_path), flips=False, mode="posterior")
    assert post.std is None and torch.equal(post.latents, once.latents)
    assert len(os.listdir(tmp_path)) == 1  # one file serves both
    rows = torch.tensor([4, 0, 9])
    state = torch.get_rng_state()
    assert torch.equal(post.draw(rows), once.latents[rows])
    assert torch.equal(torch.get_rng_state(), state)  # and drawing it consumes no random numbers


def test_bad_mode_and_dtype_are_named(digits, tmp_path):
    with pytest.raises(ValueError, match="latents mode='fresh' is invalid; valid: sample_once, posterior"):
        extract_latents(digits, PixelSpace(1), str(tmp_path), mode="fresh")
    with pytest.raises(ValueError, match="latent dtype='bfloat16' is invalid; valid: float32, float16"):
        extract_latents(digits, PixelSpace(1), str(tmp_path), dtype="bfloat16")


# ---------------------------------------------------------------- sampler
def test_epoch_covers_every_item_once_across_ranks():
    n, per_rank, world = 103, 5, 4
    spe = steps_per_epoch(n, per_rank * world)
    assert spe == 103 // 20
    seen = torch.cat([indices_for_step(s, per_rank, seed=7, rank=r, world_size=world, num_items=n)
                      for s in range(spe) for r in range(world)])
    assert len(seen) == spe * 20 and len(set(seen.tolist())) == len(seen)  # disjoint, no repeats
    assert seen.min() >= 0 and seen.max() < n


def test_ranks_split_the_single_process_batch():
    kwargs = dict(seed=1, num_items=50)
    whole = indices_for_step(3, 8, rank=0, world_size=1, **kwargs)
    parts = [indices_for_step(3, 2, rank=r, world_size=4, **kwargs) for r in range(4)]
    assert torch.equal(torch.cat(parts), whole)


def test_reproducible_and_seed_epoch_dependent():
    a = indices_for_step(11, 4, seed=0, num_items=40)
    assert torch.equal(a, indices_for_step(11, 4, seed=0, num_items=40))
    assert not torch.equal(a, indices_for_step(11, 4, seed=1, num_items=40))
    # step 11 is epoch 1 (10 steps/epoch), position 1; the same position in epoch 0 uses another permutation
    assert not torch.equal(a, indices_for_step(1, 4, seed=0, num_items=40))


def test_loader_resume_matches(digits, tmp_path):
    lat = extract_latents(digits, PixelSpace(1), str(tmp_path))
    full = lat.loader(16, seed=5, rank=1, world_size=2)
    batches = [next(full) for _ in range(6)]
    resumed = next(lat.loader(16, seed=5, rank=1, world_size=2, start_step=4))
    assert torch.equal(resumed[0], batches[4][0]) and torch.equal(resumed[1], batches[4][1])
    x, y = batches[0]
    assert x.shape == (16, 1, 8, 8) and y.shape == (16,)


def test_drop_last_false_wraps_to_full_batches():
    assert steps_per_epoch(10, 4, drop_last=False) == 3
    last = indices_for_step(2, 4, seed=0, num_items=10, drop_last=False)
    epoch = torch.cat([indices_for_step(s, 4, seed=0, num_items=10, drop_last=False) for s in range(2)])
    assert len(last) == 4 and torch.equal(last[2:], epoch[:2])  # wrapped to the start of the same permutation
    assert set(torch.cat([epoch, last[:2]]).tolist()) == set(range(10))


def test_sampler_errors():
    with pytest.raises(ValueError, match=r"rank must be an int in \[0, 2\), got 2"):
        indices_for_step(0, 4, seed=0, rank=2, world_size=2, num_items=100)
    with pytest.raises(ValueError, match="global batch 64 is larger than the dataset \\(10 items\\)"):
        indices_for_step(0, 32, seed=0, world_size=2, num_items=10)
    with pytest.raises(ValueError, match="step must be an int >= 0, got -1"):
        indices_for_step(-1, 4, seed=0, num_items=10)
