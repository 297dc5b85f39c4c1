"""The benchmark grid of a submission: sweep overrides -> composed, validated cells.

``method=dit,dtr size=S,B seed=0,1`` expands (Hydra's sweep syntax, in Hydra's order)
into eight cells. Every cell is composed and validated before anything is queued, so
a cell with a missing data path or a bad value refuses the whole submission in one
line. Two cells that would write the same run folder (a swept key that is not part of
``run_name``) are refused too: they would overwrite each other's checkpoints.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from benchmark.config import ConfigError, compose, expand_sweep

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
    """One grid point: its overrides and the composed, resolved config a job runs with."""

    overrides: tuple[str, ...]
    config: dict

    @property
    def run_name(self) -> str:
        return self.config["run_name"]

    @property
    def cfg(self) -> DictConfig:
        return OmegaConf.create(self.config)

    @property
    def record(self) -> Path:
        from benchmark.results import record_path

        return record_path(self.config["paths"]["results"], self.run_name)

    @property
    def run_dir(self) -> Path:
        return Path(self.config["paths"]["runs"]) / self.run_name

    def is_done(self) -> bool:
        """A cell is finished once its result record exists."""
        return self.record.is_file()

    def label(self) -> str:
        """The swept part of the overrides, for tables (falls back to the run name)."""
        return " ".join(self.overrides) or self.run_name


def expand_aliases(args: list[str]) -> list[str]:
    from benchmark.cli import ALIASES

    table = {**ALIASES, **LAUNCH_ALIASES}
    out = []
    for arg in args:
        key, sep, value = arg.partition("=")
        out.append(f"{table[key]}={value}" if sep and key in table else arg)
    return out


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
        cells.append(Cell(overrides=shown, config=config))
    _refuse_swept_launcher(cells)
    _refuse_collisions(cells)
    return cells


def _refuse_collisions(cells: list[Cell]) -> None:
    seen: dict[str, Cell] = {}
    for cell in cells:
        key = str(cell.run_dir)
        if key in seen:
            raise ConfigError(
                f"cells '{seen[key].label()}' and '{cell.label()}' share the run folder {key}; "
                "put the swept key into run_name (e.g. run_name='${method.name}-${size.name}-lr${train.lr}')"
            )
        seen[key] = cell


def _refuse_swept_launcher(cells: list[Cell]) -> None:
    first = cells[0].config["launcher"]
    for cell in cells[1:]:
        if cell.config["launcher"] != first:
            raise ConfigError("launcher settings cannot be swept within one submission; "
                              "submit each launcher setting separately")
