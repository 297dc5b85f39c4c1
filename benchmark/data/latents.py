"""The latent cache: encode a dataset once (optionally DDP-parallel), then train from the stored tensors.

DiT (arXiv 2212.09748) trains on `vae.encode(x).latent_dist.sample() * 0.18215` of randomly flipped,
center-cropped images, encoding every step. Here every image is encoded once, as is and horizontally
flipped, so sampling uniformly from the cache reproduces the random flip without running the encoder
during training. What is stored per row depends on the mode (`data.latents`):

- `sample_once`: one posterior sample `scale * (mean + std * n)`, its noise n drawn once at extraction;
  every epoch then trains on the same sample of each image.
- `posterior`: the scaled posterior `mean` and `std` (twice the size), and training draws a fresh
  `mean + std * eps` every step (`LatentSet.draw`), as the official code's per-step encoding does.
  A deterministic encoder (pixel space) has no posterior spread: there `posterior` is `sample_once`,
  the same cache file and the same batches.

`dtype=float16` stores the rows in half precision (half the disk; draws are computed in float32).

Layout of a LatentSet with flips (N images): rows 0..N-1 are the images in dataset order, rows N..2N-1
the flipped images in the same order (row N + i is the flip of row i). Labels follow the same layout.

In `sample_once`, stochastic encoders (the SD VAE) draw one standard-normal noise tensor per row from a
CPU generator seeded with (seed, row), so the cache is bit-identical however the work is split over
ranks/batches; the `posterior` cache draws nothing and does not depend on the seed.

Cache file: `<cache_dir>/latents-<dataset>-<autoencoder>[-posterior]-<hash>.pt`, a `torch.save` dict of
tensors and plain metadata, read back with `torch.load(weights_only=True, mmap=True)` and written
atomically (temp file + os.replace), so an interrupted run never leaves a partial cache behind. The hash
covers dataset, encoder, flips, mode, dtype and (sample_once only) seed, so a cache of one mode is
never read as the other.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field

import torch
from torch.utils.data import DataLoader, Dataset

from methods.atomic import atomic_write
from ..autoencoder import Autoencoder, from_uint8
from .sampler import indices_for_step as _indices_for_step
from .sampler import steps_per_epoch as _steps_per_epoch

FORMAT_VERSION = 1
LATENT_MODES = ("sample_once", "posterior")
STORAGE_DTYPES = {"float32": torch.float32, "float16": torch.float16}


def _check_choice(name: str, value, valid) -> None:
    if value not in valid:
        raise ValueError(f"{name}={value!r} is invalid; valid: {', '.join(valid)}")


def stored_mode(autoencoder: Autoencoder, mode: str) -> str:
    """The mode a cache of `autoencoder` holds: without a posterior spread, `posterior` is `sample_once`."""
    _check_choice("latents mode", mode, LATENT_MODES)
    return mode if autoencoder.stochastic else "sample_once"


@dataclass
class LatentSet:
    """Encoded dataset: latents (M, C, h, w), labels (M,) int64; see module docstring for row order.

    `latents` holds the stored samples (sample_once) or the posterior means (posterior, then `std`
    holds the posterior standard deviations); both in the stored dtype.
    """

    latents: torch.Tensor
    labels: torch.Tensor
    key: str
    num_classes: int
    flips: bool
    meta: dict = field(default_factory=dict)
    std: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.latents.shape[0]

    @property
    def mode(self) -> str:
        return "sample_once" if self.std is None else "posterior"

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return tuple(self.latents.shape[1:])

    def batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(stored latents, labels) rows for int64 `indices` (copies; the stored tensors may be memory-mapped).

        For a posterior set these are the means; `draw` gives a sample.
        """
        return self.latents[indices], self.labels[indices]

    def draw(self, indices: torch.Tensor, device=None, generator: torch.Generator | None = None) -> torch.Tensor:
        """float32 training latents of rows `indices` on `device`.

        sample_once: the stored rows. posterior: a fresh `mean + std * eps`, eps ~ N(0, I) drawn on `device`
        from `generator` (default: that device's global RNG, which the trainer reseeds every step, so a
        resumed run draws the same eps). A sample_once set draws no random numbers.
        """
        x = self.latents[indices].to(device=device, dtype=torch.float32)
        if self.std is None:
            return x
        std = self.std[indices].to(device=device, dtype=torch.float32)
        eps = torch.randn(x.shape, device=x.device, dtype=torch.float32, generator=generator)
        return x + std * eps

    def steps_per_epoch(self, global_batch: int, drop_last: bool = True) -> int:
        return _steps_per_epoch(len(self), global_batch, drop_last)

    def indices_for_step(self, step: int, per_rank_batch: int, *, seed: int, rank: int = 0, world_size: int = 1,
                         drop_last: bool = True) -> torch.Tensor:
        """Row indices `rank` uses at `step`; see `benchmark.data.sampler.indices_for_step`."""
        return _indices_for_step(step, per_rank_batch, seed=seed, rank=rank, world_size=world_size,
                                 num_items=len(self), drop_last=drop_last)

    def loader(self, batch_size: int, *, seed: int, rank: int = 0, world_size: int = 1, start_step: int = 0,
               drop_last: bool = True):
        """Endless iterator of per-rank (latents, labels) batches for steps start_step, start_step + 1, ...

        `batch_size` is per rank. Deterministic in (seed, step): resuming with start_step=s continues exactly.
        """
        step = start_step
        while True:
            yield self.batch(self.indices_for_step(step, batch_size, seed=seed, rank=rank, world_size=world_size,
                                                   drop_last=drop_last))
            step += 1


# What a row of each mode holds: the noise (or its absence) that determines it.
_CONTENT = {
    "sample_once": lambda autoencoder, seed: f"seed={seed}" if autoencoder.stochastic else "deterministic",
    "posterior": lambda autoencoder, seed: "posterior",
}


def cache_key(dataset, autoencoder: Autoencoder, flips: bool, seed: int, mode: str = "sample_once",
              dtype: str = "float32") -> str:
    """Everything that determines the cache contents, as one string."""
    mode = stored_mode(autoencoder, mode)
    _check_choice("latent dtype", dtype, STORAGE_DTYPES)
    stored = "" if dtype == "float32" else f"|{dtype}"
    return f"{dataset.key}|{autoencoder.key}|flips={bool(flips)}|{_CONTENT[mode](autoencoder, seed)}{stored}" \
           f"|v{FORMAT_VERSION}"


def cache_path(dataset, autoencoder: Autoencoder, cache_dir: str, flips: bool = True, seed: int = 0,
               mode: str = "sample_once", dtype: str = "float32") -> str:
    digest = hashlib.sha1(cache_key(dataset, autoencoder, flips, seed, mode, dtype).encode()).hexdigest()[:16]
    tag = "-posterior" if stored_mode(autoencoder, mode) == "posterior" else ""
    return os.path.join(cache_dir, f"latents-{dataset.name}-{autoencoder.name}{tag}-{digest}.pt")


def _atomic_save(obj, path: str) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def load_latents(path: str, expected_key: str | None = None) -> LatentSet | None:
    """Load a cache file (memory-mapped); None if it is missing or its key/format does not match."""
    if not os.path.isfile(path):
        return None
    data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    if data.get("format") != FORMAT_VERSION or (expected_key is not None and data.get("cache_key") != expected_key):
        return None
    # Files written before the posterior mode carry no "mode" field: they hold one sample per row.
    if data.get("mode", "sample_once") == "posterior" and "std" not in data:
        return None
    meta = {k: v for k, v in data.items() if k not in ("latents", "labels", "std")}
    return LatentSet(latents=data["latents"], labels=data["labels"], key=data["cache_key"],
                     num_classes=int(data["num_classes"]), flips=bool(data["flips"]), meta=meta,
                     std=data.get("std"))


class _IndexedItems(Dataset):
    """Deterministic (no random flip) items of `indices`, returned with their dataset index."""

    def __init__(self, dataset, indices: list[int]):
        self.dataset, self.indices = dataset, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int):
        image, label = self.dataset.load(self.indices[k])
        return image, label, self.indices[k]


def _row_noise(rows: torch.Tensor, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """One standard-normal tensor per cache row, each from its own generator (split-invariant)."""
    out = torch.empty((len(rows), *shape))
    for k, row in enumerate(rows.tolist()):
        g = torch.Generator().manual_seed((int(seed) * 0x9E3779B97F4A7C15 + row) % (2 ** 63))
        out[k] = torch.randn(shape, generator=g)
    return out


def _encode_sample(autoencoder, x, rows, seed) -> tuple[torch.Tensor]:
    noise = _row_noise(rows, tuple(autoencoder.latent_shape(x.shape[-1])), seed) if autoencoder.stochastic else None
    return (autoencoder.encode(x, noise=noise),)


def _encode_posterior(autoencoder, x, rows, seed) -> tuple[torch.Tensor, torch.Tensor]:
    return autoencoder.posterior(x)


# mode -> (the stored fields, the encoder producing them for a batch of images)
_MODES = {
    "sample_once": (("latents",), _encode_sample),
    "posterior": (("latents", "std"), _encode_posterior),
}


def _encode_indices(dataset, autoencoder, indices, *, batch_size, device, flips, seed, num_workers, progress,
                    mode, dtype) -> dict[str, torch.Tensor]:
    """Per stored field, a (F, len(indices), C, h, w) tensor: [0] the images of `indices`, [1] their flips."""
    n_total = len(dataset)
    shape = autoencoder.latent_shape(dataset.image_size)
    names, encode = _MODES[mode]
    views = 2 if flips else 1
    out = {name: torch.empty((views, len(indices), *shape), dtype=STORAGE_DTYPES[dtype]) for name in names}
    loader = DataLoader(_IndexedItems(dataset, indices), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers)
    if progress:
        from tqdm import tqdm
        loader = tqdm(loader, desc="encoding latents")
    done = 0
    for images, _, idx in loader:
        n = images.shape[0]
        for view in range(views):
            # view 1 is the flip; its rows (and noise seeds) follow all N plain rows
            x = from_uint8(images.flip(-1) if view else images).to(device)
            for name, value in zip(names, encode(autoencoder, x, idx + view * n_total, seed)):
                out[name][view, done:done + n] = value.to("cpu")
        done += n
    return out


def _validate_everywhere(dataset, indices, world_size: int) -> None:
    """Run dataset.validate on this rank's shard; with DDP every rank raises if any rank found a bad file."""
    error = None
    try:
        dataset.validate(indices)
    except (ValueError, OSError) as err:
        error = err
    if world_size > 1:
        messages = [None] * world_size
        torch.distributed.all_gather_object(messages, None if error is None else str(error))
        first = next((m for m in messages if m), None)
        if first is not None and error is None:
            raise ValueError(first)
    if error is not None:
        raise error


def extract_latents(dataset, autoencoder: Autoencoder, cache_dir: str, *, batch_size: int = 64, device="cpu",
                    rank: int = 0, world_size: int = 1, flips: bool = True, progress: bool = False, seed: int = 0,
                    num_workers: int = 0, mode: str = "sample_once", dtype: str = "float32") -> LatentSet:
    """Encode `dataset` with `autoencoder` once and cache it in `cache_dir`; later calls just load it.

    With world_size > 1 (torch.distributed initialised) rank r encodes dataset indices r::world_size,
    saves a shard, and rank 0 merges the shards in dataset order into the final cache; all ranks
    return the same LatentSet. `cache_dir` must be visible to every rank (a shared filesystem across
    nodes). Pixel space (`none`) stores the [-1, 1] images themselves. `num_workers` feeds a DataLoader
    for image decoding; `seed` fixes the noise of stochastic encoders in `sample_once`; `mode`
    (sample_once | posterior) and `dtype` (float32 | float16) choose what is stored (module docstring).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank!r}")
    if world_size > 1 and not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        raise ValueError(f"extract_latents(world_size={world_size}) needs an initialised torch.distributed "
                         f"process group")
    if dataset.channels != autoencoder.image_channels:
        raise ValueError(f"dataset {dataset.name!r} has {dataset.channels} channels but autoencoder "
                         f"{autoencoder.name!r} expects {autoencoder.image_channels}")
    autoencoder.latent_shape(dataset.image_size)  # fails now, not mid-run, on a non-divisible size

    key = cache_key(dataset, autoencoder, flips, seed, mode, dtype)
    path = cache_path(dataset, autoencoder, cache_dir, flips, seed, mode, dtype)
    mode = stored_mode(autoencoder, mode)
    cached = load_latents(path, key)
    if cached is not None:
        return cached
    os.makedirs(cache_dir, exist_ok=True)

    n = len(dataset)
    indices = list(range(rank, n, world_size))
    _validate_everywhere(dataset, indices, world_size)
    fields = _encode_indices(dataset, autoencoder, indices, batch_size=batch_size, device=device, flips=flips,
                             seed=seed, num_workers=num_workers, progress=progress and rank == 0, mode=mode,
                             dtype=dtype)
    if world_size > 1:
        shard = f"{path}.shard{rank}of{world_size}"
        _atomic_save(fields, shard)
        del fields
        torch.distributed.barrier()
        if rank == 0:
            fields = {}
            for r in range(world_size):
                shard_r = f"{path}.shard{r}of{world_size}"
                part = torch.load(shard_r, map_location="cpu", weights_only=True)
                for name, value in part.items():
                    if name not in fields:
                        fields[name] = torch.empty((value.shape[0], n, *value.shape[2:]), dtype=value.dtype)
                    fields[name][:, r::world_size] = value
            _write_cache(path, key, dataset, autoencoder, flips, seed, mode, dtype, fields)
            for r in range(world_size):
                os.remove(f"{path}.shard{r}of{world_size}")
        torch.distributed.barrier()
    else:
        _write_cache(path, key, dataset, autoencoder, flips, seed, mode, dtype, fields)
    result = load_latents(path, key)
    if result is None:
        raise RuntimeError(f"latent cache '{path}' was written but could not be read back")
    return result


def _write_cache(path, key, dataset, autoencoder, flips, seed, mode, dtype, fields) -> None:
    labels = torch.as_tensor(dataset.labels, dtype=torch.int64)
    # (F, N, C, h, w) -> (F * N, C, h, w): a view, rows of view f at f * N + i
    rows = {name: value.reshape(-1, *value.shape[2:]) for name, value in fields.items()}
    _atomic_save({
        "format": FORMAT_VERSION,
        "cache_key": key,
        "dataset_key": dataset.key,
        "autoencoder_key": autoencoder.key,
        "flips": bool(flips),
        "seed": int(seed),
        "mode": mode,
        "dtype": dtype,
        "num_items": len(dataset),
        "num_classes": int(dataset.num_classes),
        **rows,
        "labels": torch.cat([labels, labels]) if flips else labels,
    }, path)
