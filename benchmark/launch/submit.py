"""``python -m benchmark submit [overrides, sweeps] [launcher=slurm|local]``: queue a grid.

Steps, each of which can refuse the whole submission before anything is queued:

1. expand the sweeps (``method=dit,dtr size=S,B seed=0,1``) and compose + validate every cell;
2. ``launcher=slurm``: a SLURM controller must answer (else one line: use launcher=local);
3. drop the cells that are finished (their record exists) or still queued/running from an
   earlier submission, so submitting a grid again only fills its holes;
4. check the time limits (see ``check_time_limits``) and the array size against the
   cluster's ``MaxArraySize``; ``sbatch --test-only`` each stage's script (unknown
   partition/account/QOS, impossible resources);
5. submit train -> sample -> evaluate and write the manifest for ``status``.

Time limit vs checkpoint interval: the pre-timeout signal makes the trainer save and
requeue, but a signal can be lost (node failure, a step longer than ``signal_delay_s``).
Then only the periodic checkpoints (every ``train.ckpt_every`` steps) are left, and a job
whose time limit is shorter than one checkpoint interval would restart from the same
checkpoint forever. With a step-time estimate (``launcher.stages.train.sec_per_step``, or
the ``steps_per_sec`` an earlier attempt of the cell logged), ``time_min`` must cover
``min(ckpt_every, iterations) x sec_per_step``; without one the check is skipped and says so.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping, Sequence

from benchmark import cell as cell_paths
from benchmark.config import ConfigError
from benchmark.launch.backends import backend_for
from benchmark.launch.grid import Cell, build_grid, split_args
from benchmark.launch.manifest import new_submission
from benchmark.launch.stages import STAGE_ORDER
from benchmark.launch.status import grid_statuses


def measured_sec_per_step(run_dir: Path) -> float | None:
    """Seconds per step from the newest ``steps_per_sec`` in the cell's metrics.jsonl, if any."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return None
    rate = None
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            value = json.loads(line).get("steps_per_sec")
        except ValueError:
            continue
        if isinstance(value, (int, float)) and value > 0:
            rate = float(value)
    return 1.0 / rate if rate else None


def check_time_limits(cells: Sequence[Cell], launcher: Mapping) -> list[str]:
    """Raise ConfigError for a time limit that cannot work; return notes for checks skipped."""
    if launcher.get("name") != "slurm":
        return []
    delay = int(launcher["slurm"]["signal_delay_s"])
    if delay < 0:
        raise ConfigError(f"launcher.slurm.signal_delay_s={delay} is invalid; expected seconds >= 0")
    for stage in STAGE_ORDER:
        res = launcher["stages"][stage]
        minutes = res["time_min"]
        if not isinstance(minutes, int) or minutes <= 0:
            raise ConfigError(f"launcher.stages.{stage}.time_min={minutes!r} is invalid; expected minutes > 0")
        if delay >= minutes * 60:
            raise ConfigError(
                f"launcher.slurm.signal_delay_s={delay} is not shorter than launcher.stages.{stage}.time_min="
                f"{minutes} min ({minutes * 60} s): the pre-timeout signal would come before any work; "
                "raise time_min or lower signal_delay_s")
        nodes = res.get("nodes") or 1
        if not isinstance(nodes, int) or nodes < 1:
            raise ConfigError(f"launcher.stages.{stage}.nodes={nodes!r} is invalid; expected an integer >= 1")
    train = launcher["stages"]["train"]
    configured = train.get("sec_per_step")
    if configured is not None and not float(configured) > 0:
        raise ConfigError(f"launcher.stages.train.sec_per_step={configured!r} is invalid; expected seconds > 0")
    unchecked = []
    for cell in cells:
        if configured is not None:
            sec, source = float(configured), f"launcher.stages.train.sec_per_step={configured}"
        else:
            sec = measured_sec_per_step(cell.run_dir)
            source = f"measured in {cell.run_dir}/metrics.jsonl"
        tc = cell.config["train"]
        interval = min(int(tc["ckpt_every"]), int(tc["iterations"]))
        if sec is None:
            unchecked.append(cell.key)
            continue
        need = interval * sec / 60.0
        if train["time_min"] < need:
            raise ConfigError(
                f"launcher.stages.train.time_min={train['time_min']} min is shorter than one checkpoint interval "
                f"of {cell.key}: {interval} steps (train.ckpt_every) x {sec:.3g} s/step ({source}) = "
                f"{need:.1f} min; raise time_min or lower train.ckpt_every")
    if not unchecked:
        return []
    return [f"time limit not checked against train.ckpt_every for {len(unchecked)} cell(s) without a step-time "
            "estimate; set launcher.stages.train.sec_per_step to check it"]


def plan(cells: Sequence[Cell], args: Sequence[str]) -> tuple[list[Cell], list[str]]:
    """Cells still to submit, and one line per cell skipped (finished, queued, or its run is training).

    A cell is finished only when the record of its own identity exists. With ``overwrite=true``
    finished cells are submitted again, but a cell (or its training run) that another submission
    is still running is refused: redoing it would pull its files from under that job.
    """
    statuses = grid_statuses(list(args), list(cells))[0]
    by_key = {s.key: s for s in statuses}
    busy_runs = {s.key.split("/")[0]: s for s in statuses if s.state in ("pending", "running")}
    todo, skipped = [], []
    for cell in cells:
        status = by_key.get(cell.key)
        busy = status if status is not None and status.state in ("pending", "running") else busy_runs.get(cell.run_id)
        overwrite = bool(cell.config.get("overwrite"))
        if busy is not None and overwrite:
            raise ConfigError(f"overwrite=true on cell {cell.key}, which a submission is still running "
                              f"({busy.key}: {busy.state}, {busy.stage} job {busy.job_id}); wait for it or cancel it")
        if cell.is_done() and not overwrite:
            skipped.append(f"skip {cell.key}: finished ({cell.record}; overwrite=true runs it again)")
        elif busy is not None and busy.key == cell.key:
            skipped.append(f"skip {cell.key}: already {busy.state} ({busy.stage} job {busy.job_id})")
        elif busy is not None:
            skipped.append(f"skip {cell.key}: its training run is {busy.state} for {busy.key} ({busy.stage} job "
                           f"{busy.job_id}); submit again when that finishes")
        else:
            todo.append(cell)
    return todo, skipped


def _set_aside(cells: Sequence[Cell], stages: Sequence[str]) -> list[Cell]:
    """overwrite=true: move what the stages replace aside now, once; the jobs run with it off
    (a requeued job must never move its own progress aside)."""
    from dataclasses import replace

    out = []
    for c in cells:
        if not c.config.get("overwrite"):
            out.append(c)
            continue
        cfg = cell_paths.apply_overwrite(c.cfg, tuple(stages))
        out.append(replace(c, config={**c.config, "overwrite": bool(cfg.overwrite)}))
    return out


def _preflight(c: Cell, launcher: Mapping, say) -> None:
    """The training preflight of one cell, judged against the devices it will get (benchmark.preflight)."""
    import io

    import torch

    from benchmark import preflight

    cfg = c.cfg
    if launcher["name"] == "slurm":
        slurm, train = launcher["slurm"], launcher["stages"]["train"]
        gpus = int(train.get("gpus_per_node") or slurm.get("gpus_per_node") or 0)
        world = max(gpus, 1) * int(train.get("nodes") or 1)
        device = torch.device("cuda" if gpus else "cpu")
        gb = cfg.preflight.get("device_memory_gb") or (slurm.get("gpu_memory_gb") if gpus else None)
        sec = train.get("sec_per_step") or measured_sec_per_step(c.run_dir)
        timed = False
    else:
        world, device, gb, sec, timed = 1, None, cfg.preflight.get("device_memory_gb"), None, True
    out = io.StringIO()
    preflight.check(cfg, world_size=world, device=device, memory_bytes=None if gb is None else int(float(gb) * 1024 ** 3),
                    sec_per_step=sec, time_steps=timed, out=out)
    for line in out.getvalue().splitlines():
        say(line)


def submit_grid(args: Sequence[str], stages: Sequence[str] = STAGE_ORDER, quiet: bool = False) -> dict | None:
    """Submit the grid named by ``args``; return the manifest, or None when nothing was left to do."""
    args = split_args(list(args))
    cells = build_grid(args)
    launcher = cells[0].config["launcher"]
    backend = backend_for(launcher["name"])
    backend.preflight()
    todo, skipped = plan(cells, args)
    say = (lambda *_: None) if quiet else print
    for line in skipped:
        say(line)
    if not todo:
        say(f"nothing to submit: all {len(cells)} cells are finished or queued")
        return None
    notes = check_time_limits(todo, launcher)
    for c in todo:
        if not cell_paths.training_finished(c.cfg):
            _preflight(c, launcher, say)
    manifest = new_submission(cells[0].config["paths"]["runs"], launcher["name"], list(args), os.getcwd())
    backend.check(todo, launcher, Path(manifest["logs"]), stages)
    todo = _set_aside(todo, stages)
    for note in notes:
        say(f"note: {note}")
    manifest["exit_code"] = backend.submit(todo, launcher, manifest, stages)
    return manifest


def _report(manifest: Mapping) -> str:
    from tabulate import tabulate

    from benchmark.launch.manifest import manifest_path

    rows = [[c["label"], c["key"], *[c["jobs"].get(s, {}).get("job_id", "-") for s in STAGE_ORDER]]
            for c in manifest["cells"]]
    table = tabulate(rows, headers=["cell", "run / evaluation", *STAGE_ORDER], tablefmt="simple")
    args = " ".join(manifest["args"])
    return (f"{table}\n{len(rows)} cells submitted ({manifest['launcher']}); manifest: {manifest_path(manifest)}\n"
            f"follow with: python -m benchmark status {args}".rstrip())


def main(args: list[str]) -> int:
    manifest = submit_grid(args)
    if manifest is None:
        return 0
    print(_report(manifest))
    return int(manifest.get("exit_code", 0))
