"""Deterministic, resumable batch indices for (DDP) training from a cached LatentSet.

Epoch e is one `torch.randperm(num_items)` drawn from a CPU generator seeded with `epoch_seed(seed, e)`.
Step s reads global batch number `s % steps_per_epoch` of epoch `s // steps_per_epoch`; the global batch
(per_rank_batch * world_size indices) is cut into contiguous per-rank chunks, so ranks are disjoint and
together cover the epoch exactly once (drop_last=True drops the remainder, as DiT's DistributedSampler
setup does). The result depends only on (step, per_rank_batch, seed, rank, world_size, num_items), so a
resumed run that restarts at step s sees exactly the batches it would have seen.
"""
from __future__ import annotations

from functools import lru_cache

import torch

_GOLDEN = 0x9E3779B97F4A7C15  # odd 64-bit constant: spreads seeds so (seed, epoch) pairs never collide in practice


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def epoch_seed(seed: int, epoch: int) -> int:
    """The generator seed of one epoch's permutation (a fixed mix of seed and epoch, in [0, 2**63))."""
    return (int(seed) * _GOLDEN + int(epoch)) % (2 ** 63)


@lru_cache(maxsize=4)
def epoch_permutation(num_items: int, seed: int, epoch: int) -> torch.Tensor:
    """The permutation of range(num_items) used in `epoch` (cached: every step of an epoch reuses it)."""
    generator = torch.Generator().manual_seed(epoch_seed(seed, epoch))
    return torch.randperm(num_items, generator=generator)


def steps_per_epoch(num_items: int, global_batch: int, drop_last: bool = True) -> int:
    """Optimizer steps per pass over the data for a global batch size."""
    _check_int("num_items", num_items, 1)
    _check_int("global_batch", global_batch, 1)
    if drop_last:
        if global_batch > num_items:
            raise ValueError(f"global batch {global_batch} is larger than the dataset ({num_items} items) with "
                             f"drop_last=True; lower the batch size or set drop_last=False")
        return num_items // global_batch
    return -(-num_items // global_batch)


def indices_for_step(step: int, per_rank_batch: int, *, seed: int, rank: int = 0, world_size: int = 1,
                     num_items: int, drop_last: bool = True) -> torch.Tensor:
    """int64 indices (per_rank_batch,) that `rank` trains on at `step`.

    With drop_last=False the final, partial batch of an epoch is filled by wrapping around to the
    start of the same permutation, so every rank always receives exactly per_rank_batch indices.
    """
    _check_int("step", step, 0)
    _check_int("per_rank_batch", per_rank_batch, 1)
    _check_int("world_size", world_size, 1)
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
        raise ValueError(f"rank must be an int in [0, {world_size}), got {rank!r}")
    global_batch = per_rank_batch * world_size
    spe = steps_per_epoch(num_items, global_batch, drop_last)
    epoch, position = divmod(step, spe)
    perm = epoch_permutation(num_items, int(seed), epoch)
    start = position * global_batch + rank * per_rank_batch
    offsets = torch.arange(start, start + per_rank_batch) % num_items
    return perm[offsets]
