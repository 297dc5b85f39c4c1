"""Launching the benchmark grid: SLURM job arrays through submitit, or this machine.

``python -m benchmark submit method=dit,dtr size=S,B seed=0,1 launcher=slurm`` queues
train -> sample -> evaluate for every unfinished cell; ``python -m benchmark status`` with
the same overrides shows each cell as pending / running / done / failed.

Modules: ``grid`` (sweep -> validated cells), ``stages`` (requeue-safe job callables),
``slurm`` (cluster checks, resources, job states), ``backends`` (slurm / local),
``manifest`` (what was submitted where), ``submit`` and ``status`` (the two verbs).
"""
from benchmark.launch.grid import Cell, build_grid
from benchmark.launch.stages import STAGE_ORDER, StageJob
from benchmark.launch.submit import submit_grid
from benchmark.launch.status import grid_statuses

__all__ = ["Cell", "build_grid", "STAGE_ORDER", "StageJob", "submit_grid", "grid_statuses"]
