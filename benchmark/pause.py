"""Holding a training run at a checkpoint boundary: the ``PAUSE`` file of a run folder.

An operator who wants a run to stop moving without losing its place (to copy or inspect
a checkpoint, to cancel a job at a known step, to free a shared machine for a while)
creates ``<run folder>/PAUSE``. At its next checkpoint boundary, once that checkpoint
is on disk, training writes ``<run folder>/PAUSED`` (the step and the checkpoint, as
JSON) and waits until ``PAUSE`` is removed; it then deletes ``PAUSED`` and carries on.
A scheduler's stop signal ends the wait at once, so a paused job that is pre-empted or
reaches its time limit still checkpoints and requeues. The final step never pauses.

Under DDP every rank looks at the file and the ranks agree through one all-reduce per
poll, so all of them hold at the same step and leave together.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist

from methods.atomic import atomic_write_json

log = logging.getLogger(__name__)

PAUSE = "PAUSE"
PAUSED = "PAUSED"
POLL_S = 0.5


def pause_requested(run_dir: Path) -> bool:
    return (Path(run_dir) / PAUSE).exists()


def _any_rank(*flags: bool, device) -> tuple[bool, ...]:
    """Each flag OR-ed over the ranks (one all-reduce), so every rank takes the same branch."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flags
    t = torch.tensor([1.0 if f else 0.0 for f in flags], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return tuple(bool(v) for v in t.tolist())


def hold_if_paused(run_dir: Path, step: int, checkpoint: Path, *, stop_requested: Callable[[], bool],
                   device="cpu", is_main: bool = True, poll_s: float = POLL_S) -> bool:
    """Wait while ``run_dir/PAUSE`` exists (or until ``stop_requested()``); True if it waited.

    Call it right after the checkpoint of ``step`` is written, on every rank.
    """
    run_dir = Path(run_dir)
    (paused,) = _any_rank(pause_requested(run_dir), device=device)
    if not paused:
        return False
    marker = run_dir / PAUSED
    if is_main:
        atomic_write_json(marker, {"step": int(step), "checkpoint": str(checkpoint), "pid": os.getpid(),
                                   "since": time.time()})
        log.info("paused at step %d (checkpoint %s): remove %s to continue", step, checkpoint, run_dir / PAUSE)
    try:
        while True:
            paused, stop = _any_rank(pause_requested(run_dir), stop_requested(), device=device)
            if stop or not paused:
                break
            time.sleep(poll_s)
    finally:
        if is_main:
            marker.unlink(missing_ok=True)
    return True
