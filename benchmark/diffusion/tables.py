"""Indexing float64 schedule tables with a batch of timesteps, and per-sample reductions.

Schedule tables are kept as float64 numpy arrays (as in ADM, Dhariwal & Nichol 2021,
arXiv 2105.05233) so that products like ᾱ_t are accurate; they are converted to the
device and dtype of the tensor they meet only when indexed.
"""
from __future__ import annotations

import numpy as np
import torch


def table_dtype(dtype: torch.dtype) -> torch.dtype:
    """Dtype to read a table in next to a tensor of ``dtype``.

    float64 inputs get float64 coefficients; half/bfloat16 inputs (autocast) get float32,
    since rounding ᾱ to 8 mantissa bits would distort the schedule.
    """
    if not dtype.is_floating_point:
        return torch.float32
    return torch.promote_types(dtype, torch.float32)


def check_timesteps(t: torch.Tensor, batch: int, num_timesteps: int) -> None:
    if not isinstance(t, torch.Tensor) or t.dtype.is_floating_point or t.dtype == torch.bool or t.is_complex():
        raise TypeError(f"t must be an integer (long) tensor of timestep indices, got {type(t).__name__} "
                        f"{getattr(t, 'dtype', '')}")
    if t.shape != (batch,):
        raise ValueError(f"t must have shape ({batch},) to match the batch, got {tuple(t.shape)}")
    # The range check is only done on CPU tensors: on an accelerator it would force a
    # host sync every step, and out-of-range indexing there fails on its own.
    if t.device.type == "cpu" and batch > 0 and (int(t.min()) < 0 or int(t.max()) >= num_timesteps):
        raise ValueError(f"timesteps must lie in [0, {num_timesteps}), got range "
                         f"[{int(t.min())}, {int(t.max())}]")


def extract(table: np.ndarray, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``table[t]`` reshaped to (N, 1, 1, ...) so it broadcasts against ``like`` (N, ...)."""
    values = torch.from_numpy(np.asarray(table)).to(device=like.device, dtype=table_dtype(like.dtype))
    out = values[t.to(like.device)]
    return out.reshape(t.shape[0], *([1] * (like.dim() - 1)))


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    """Mean over every dimension except the batch dimension."""
    return x.mean(dim=tuple(range(1, x.dim())))
