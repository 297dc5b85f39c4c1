"""Timestep-dependent sliding-window masks of Denoising Task Routing (arXiv 2310.07138, Sec. 3.2).

Task ``t`` of ``T`` activates the contiguous window of ``K = floor(β·U)`` units
starting at ``round((t/(T−1))^α · (U − K))``: neighbouring timesteps share most
units, early (low-noise) tasks sit at the start of the channel axis and the
window slides to the end as ``t → T−1``.  ``α`` controls how fast it slides.
The same construction, over ``depth·E`` expert slots with ``β = k/E``, is the
diffusion prior of Switch-DiT (arXiv 2403.09176, Sec. 3.3).
"""
from __future__ import annotations

import numpy as np
import torch


def window_starts(num_tasks: int, num_units: int, alpha: float, beta: float) -> np.ndarray:
    """Start index of each task's window, as int64 of shape (num_tasks,)."""
    width = int(num_units * beta)
    # float64 linspace + round-half-to-even reproduces the published tables bit for bit.
    return np.round((np.linspace(0.0, 1.0, num_tasks) ** alpha) * (num_units - width)).astype(np.int64)


def window_mask_table(num_tasks: int, num_units: int, alpha: float, beta: float) -> torch.Tensor:
    """(num_tasks, num_units) float 0/1 table; row t is the mask of task t."""
    width = int(num_units * beta)
    if not 0 < width <= num_units:
        raise ValueError(f"beta={beta} selects {width} of {num_units} units; need 1..{num_units}")
    starts = torch.from_numpy(window_starts(num_tasks, num_units, alpha, beta))
    cols = torch.arange(num_units, device="cpu")  # explicit: callers may sit in a meta-device context
    return ((cols[None] >= starts[:, None]) & (cols[None] < starts[:, None] + width)).float()


def task_index(t: torch.Tensor, num_tasks: int) -> torch.Tensor:
    """Row of the task table used for (possibly fractional) original timesteps ``t``.

    Truncates toward zero like the reference code's ``.long()`` and clamps to
    the table so a timestep at the edge (e.g. 999.7) can never index past it.
    """
    return t.long().clamp(0, num_tasks - 1)
