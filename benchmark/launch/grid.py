"""The benchmark grid of a submission: sweep overrides -> composed, validated cells.

``method=dit,dtr size=S,B seed=0,1`` expands (Hydra's sweep syntax, in Hydra's order)
into eight cells. Every cell is composed and validated before anything is queued, so
a cell with a missing data path or a bad value refuses the whole submission in one
line. Each cell carries its identity (benchmark.identity): two cells of one identity, or
two that would train the same run at once, are refused too.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from benchmark.config import ConfigError, compose, expand_sweep
from benchmark.config import expand_aliases as config_aliases
from benchmark.identity import CellIdentity, cell_identity
from benchmark.results import record_path

# Short names accepted on the submit/status command line, beside the CLI's own aliases.
LAUNCH_ALIASES = {
    "partition": "launcher.slurm.partition",
    "account": "launcher.slurm.account",
    "qos": "launcher.slurm.qos",
    "constraint": "launcher.slurm.constraint",
    "gpus_per_node": "launcher.slurm.gpus_per_node",
    "nodes": "launcher.stages.train.nodes",
    "time_min": "launcher.stages.train.time_min",
}

# Path keys made absolute at submission: jobs may start in another directory.
PATH_KEYS = ("paths.runs", "paths.results", "paths.reports", "paths.cache")


@dataclass(frozen=True)
class Cell:
    """One grid point: its overrides, the composed config a job runs with, and its identity."""

    overrides: tuple[str, ...]
    config: dict
    ident: CellIdentity

    @property
    def run_id(self) -> str:
        return self.ident.run_id

    @property
    def key(self) -> str:
        """``<run id>/<eval id>``: what status, manifests and submissions call the cell."""
        return f"{self.ident.run_id}/{self.ident.eval_id}"

    @property
    def cfg(self) -> DictConfig:
        return OmegaConf.create(self.config)

    @property
    def record(self) -> Path:
        return record_path(self.config["paths"]["results"], self.ident.run_id, self.ident.eval_id)

    @property
    def run_dir(self) -> Path:
        return Path(self.config["paths"]["runs"]) / self.ident.run_id

    def is_done(self) -> bool:
        """A cell is finished once the record of its identity exists (not one of other settings)."""
        return self.record.is_file()

    def label(self) -> str:
        """The swept part of the overrides, for tables (falls back to the cell's key)."""
        return " ".join(self.overrides) or self.key


def expand_aliases(args: list[str]) -> list[str]:
    """The CLI's aliases and the launcher's shortcuts (partition=, nodes=, ...) spelled out."""
    return config_aliases(args, LAUNCH_ALIASES)


def split_args(args: list[str]) -> list[str]:
    """Keep the overrides; refuse flags (submit and status take overrides only)."""
    flags = [a for a in args if a.startswith("-")]
    if flags:
        raise ConfigError(f"unexpected option {flags[0]!r}; submit/status take Hydra overrides only "
                          "(sweeps are comma lists, e.g. method=dit,dtr seed=0,1; no -m needed)")
    bad = [a for a in args if "=" not in a]
    if bad:
        raise ConfigError(f"argument {bad[0]!r} is not an override KEY=VALUE")
    return expand_aliases(args)


def _absolute_paths(config: dict, cwd: Path) -> None:
    for dotted in PATH_KEYS:
        section, key = dotted.split(".")
        value = config[section][key]
        if value is not None and not os.path.isabs(str(value)):
            config[section][key] = str((cwd / str(value)).resolve())


def _swept(cells: list[list[str]]) -> list[int]:
    """Positions of the overrides that differ between cells (the swept keys)."""
    if len(cells) < 2:
        return []
    return [i for i in range(len(cells[0])) if len({c[i] for c in cells}) > 1]


def build_grid(args: list[str], cwd: str | os.PathLike | None = None) -> list[Cell]:
    """Expand, compose and validate every cell; raise ConfigError (one line) on the first bad one."""
    overrides = split_args(list(args))
    cwd = Path(cwd or os.getcwd())
    expanded = expand_sweep(overrides)
    swept = _swept(expanded)
    cells: list[Cell] = []
    for cell_overrides in expanded:
        cfg = compose(cell_overrides)
        config = OmegaConf.to_container(cfg, resolve=True)
        _absolute_paths(config, cwd)
        shown = tuple(cell_overrides[i] for i in swept)
        cells.append(Cell(overrides=shown, config=config, ident=cell_identity(config)))
    _refuse_swept_launcher(cells)
    _refuse_collisions(cells)
    return cells


def _refuse_collisions(cells: list[Cell]) -> None:
    """Two cells of one identity would be one result; two cells of one training run would train it twice."""
    seen: dict[str, Cell] = {}
    runs: dict[str, Cell] = {}
    for cell in cells:
        if cell.key in seen:
            raise ConfigError(
                f"cells '{seen[cell.key].label()}' and '{cell.label()}' are the same cell {cell.key}: what they "
                "differ in cannot change a result (see benchmark.identity.NOT_IDENTITY); sweep something else")
        if cell.run_id in runs:
            raise ConfigError(
                f"cells '{runs[cell.run_id].label()}' and '{cell.label()}' share the training run {cell.run_id} and "
                "differ only in how it is sampled or evaluated; submit those settings one after the other "
                "(the second submission reuses the trained run)")
        seen[cell.key] = runs[cell.run_id] = cell


def _refuse_swept_launcher(cells: list[Cell]) -> None:
    first = cells[0].config["launcher"]
    for cell in cells[1:]:
        if cell.config["launcher"] != first:
            raise ConfigError("launcher settings cannot be swept within one submission; "
                              "submit each launcher setting separately")
