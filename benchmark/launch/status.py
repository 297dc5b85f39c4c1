"""``python -m benchmark status [overrides]``: the grid, one row per cell, from SLURM and results/.

A cell is **done** once its record exists under ``paths.results``. Otherwise the newest
submission manifest that includes it says which jobs ran its stages, and their states
(``squeue`` for live jobs, ``sacct`` for finished ones; the manifest itself for
``launcher=local``) decide: **failed** as soon as one stage failed, was cancelled or ran
out of time without a requeue (the row shows that stage's log), **running** while a stage
runs, **pending** while stages wait in the queue. With overrides, the rows are that grid's
cells; with only ``paths.*``/``launcher*`` keys (or none), every cell ever submitted under
``paths.runs``.
"""
from __future__ import annotations

import json
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from benchmark.launch.backends import backend_for, pid_alive
from benchmark.launch.grid import build_grid, split_args
from benchmark.launch.manifest import latest_entries
from benchmark.launch.slurm import SlurmUnavailable, state_class
from benchmark.launch.stages import STAGE_ORDER


@dataclass(frozen=True)
class CellStatus:
    key: str              # <run id>/<eval id>
    label: str
    state: str            # done | failed | running | pending | unknown | not submitted
    stage: str = ""
    job_id: str = ""
    log: str = ""
    detail: str = ""


def _local_state(job: Mapping, manifest: Mapping) -> str:
    state = job.get("state", "UNKNOWN")
    if state == "RUNNING" and manifest.get("host") == socket.gethostname() and not pid_alive(int(manifest["pid"])):
        return "CANCELLED"  # the submitting process died mid-stage
    return state


def derive(key: str, label: str, entry: tuple[dict, dict] | None, states: Mapping[str, str],
           record_exists: bool) -> CellStatus:
    """The status of one cell from its record, manifest entry and job states (pure).

    A record means done, unless a job of the cell is still queued or running (an overwrite in
    progress): then that job's state shows.
    """
    if entry is None:
        return CellStatus(key, label, "done" if record_exists else "not submitted")
    manifest, cell = entry
    rows = []
    for stage in STAGE_ORDER:
        job = cell["jobs"].get(stage)
        if job is None:
            continue
        raw = _local_state(job, manifest) if "state" in job else states.get(job["job_id"], "UNKNOWN")
        rows.append((stage, job, raw, state_class(raw)))
    if record_exists:
        for stage, job, raw, cls in rows:
            if cls in ("running", "pending"):
                return CellStatus(key, label, cls, stage, job["job_id"], detail=raw)
        return CellStatus(key, label, "done", job_id=cell["jobs"].get("evaluate", {}).get("job_id", ""))
    for stage, job, raw, cls in rows:  # the first failure is the cause; later stages were cancelled by it
        if cls == "failed":
            return CellStatus(key, label, "failed", stage, job["job_id"], job.get("stderr", ""), raw)
    for stage, job, raw, cls in rows:
        if cls == "running":
            return CellStatus(key, label, "running", stage, job["job_id"], detail=_progress(cell, stage))
    waiting = [(stage, job, raw) for stage, job, raw, cls in rows if cls in ("pending", "unknown")]
    if waiting:
        stage, job, raw = waiting[0]
        state = "pending" if state_class(raw) == "pending" else "unknown"
        return CellStatus(key, label, state, stage, job["job_id"], detail=raw)
    last = rows[-1] if rows else ("", {}, "", "")
    return CellStatus(key, label, "failed", last[0], last[1].get("job_id", ""), last[1].get("stderr", ""),
                      f"jobs finished but no record at {cell['record']}")


def _progress(cell: Mapping, stage: str) -> str:
    """'step 1200' for a running train stage (last row of its metrics.jsonl), else ''."""
    if stage != "train":
        return ""
    path = Path(cell["run_dir"]) / "metrics.jsonl"
    try:
        with open(path, "rb") as fh:
            fh.seek(max(0, os.path.getsize(path) - 4096))
            last = fh.read().decode("utf-8", "replace").strip().splitlines()[-1]
        return f"step {json.loads(last)['step']}"
    except (OSError, IndexError, KeyError, ValueError):
        return ""


_SCOPE_ONLY = ("paths.", "launcher", "+launcher")


def grid_statuses(args: list[str], cells: list | None = None) -> tuple[list[CellStatus], str | None]:
    """Statuses of the grid named by ``args`` (or of every submitted cell); plus a note, if any.

    ``cells``: the grid already built from ``args`` (saves composing it again).
    """
    overrides = split_args(list(args))
    cells = cells if cells is not None else build_grid(overrides)
    runs_dir = cells[0].config["paths"]["runs"]
    latest = latest_entries(runs_dir)
    whole_history = all(o.startswith(_SCOPE_ONLY) for o in overrides)
    if whole_history and not latest:
        return [], f"nothing was submitted under {runs_dir} yet"
    if whole_history:
        wanted = [(name, cell["label"], cell["record"]) for name, (_, cell) in sorted(latest.items())]
    else:
        wanted = [(c.key, c.label(), str(c.record)) for c in cells]
    note = None
    job_ids: dict[str, list[str]] = {}
    for name, _, _ in wanted:
        if name in latest:
            manifest, cell = latest[name]
            for job in cell["jobs"].values():
                if "state" not in job:
                    job_ids.setdefault(manifest["launcher"], []).append(job["job_id"])
    states: dict[str, str] = {}
    for launcher, ids in job_ids.items():
        try:
            backend = backend_for(launcher)
            backend.preflight()
            states.update(backend.job_states(ids))
        except SlurmUnavailable as exc:
            note = f"job states unknown: {exc}"
    out = [derive(name, label, latest.get(name), states, Path(record).is_file()) for name, label, record in wanted]
    return out, note


def format_table(statuses: list[CellStatus]) -> str:
    from tabulate import tabulate

    rows = []
    for s in statuses:
        where = s.log if s.state == "failed" and s.log else s.detail
        if s.state == "failed" and s.log and s.detail:
            where = f"{s.detail}: {s.log}"
        rows.append([s.label, s.key, s.state, s.stage or "-", s.job_id or "-", where or ""])
    return tabulate(rows, headers=["cell", "run / evaluation", "state", "stage", "job", "detail / log"],
                    tablefmt="simple")


def summary_line(statuses: list[CellStatus]) -> str:
    counts: dict[str, int] = {}
    for s in statuses:
        counts[s.state] = counts.get(s.state, 0) + 1
    order = ("done", "running", "pending", "failed", "unknown", "not submitted")
    return f"{len(statuses)} cells: " + ", ".join(f"{counts[k]} {k}" for k in order if k in counts)


_ERROR_LINE = re.compile(r"^(?:[A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt|Refused|Unavailable)|error)\b:?.*")


def last_error(log: str | os.PathLike, tail_bytes: int = 1 << 16) -> str | None:
    """The last exception (or ``error:``) line of a stage's log, e.g. ``ValueError: data.path=... does not exist``."""
    try:
        with open(log, "rb") as fh:
            fh.seek(max(0, os.path.getsize(log) - tail_bytes))
            lines = fh.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        if _ERROR_LINE.match(line.strip()):
            return line.strip()[:300]
    return None


def main(args: list[str]) -> int:
    statuses, note = grid_statuses(args)
    if statuses:
        print(format_table(statuses))
        print(summary_line(statuses))
        for s in statuses:
            if s.state == "failed" and s.log:
                print(f"{s.key} failed at {s.stage}: {last_error(s.log) or 'no error line in its log'}")
    if note:
        print(note)
    return 0
