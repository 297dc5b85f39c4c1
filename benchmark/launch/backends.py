"""Launch back ends, one per ``launcher`` config option: where the stages of a grid run.

``slurm``: one submitit job array per stage (train, sample, evaluate); the array task of a
cell waits for the same cell's task of the previous stage (``aftercorr``; ``afterok`` for a
one-cell grid) and is cancelled if that one fails (``--kill-on-invalid-dep=yes``). Training
jobs get the whole node (one rank per GPU, ranks from SLURM_PROCID / SLURM_NTASKS /
SLURM_LOCALID) and ``--signal=USR2@signal_delay_s``.

``local``: the same ``StageJob`` callables, cell after cell, in this process.

Both fill the submission manifest that ``status`` reads.
"""
from __future__ import annotations

import logging
import os
import traceback
from pathlib import Path
from typing import Mapping, Sequence

from benchmark.launch import slurm as slurm_mod
from benchmark.launch.grid import Cell
from benchmark.launch.manifest import write_manifest
from benchmark.launch.stages import STAGE_ORDER, StageJob

log = logging.getLogger(__name__)


def _cell_entry(cell: Cell) -> dict:
    return {"key": cell.key, "run_id": cell.run_id, "eval_id": cell.ident.eval_id, "label": cell.label(),
            "record": str(cell.record), "run_dir": str(cell.run_dir), "jobs": {}}


class SlurmBackend:
    name = "slurm"

    def preflight(self) -> None:
        slurm_mod.require_cluster()

    def job_states(self, job_ids: Sequence[str]) -> dict[str, str]:
        return slurm_mod.job_states(job_ids)

    def check(self, cells: Sequence[Cell], launcher: Mapping, folder: Path,
              stages: Sequence[str] = STAGE_ORDER) -> None:
        """Refuse before queueing: array too large, or resources SLURM would not accept."""
        slurm_mod.check_array_size(len(cells), slurm_mod.max_array_size(slurm_mod.cluster_config()))
        for stage in stages:
            slurm_mod.test_submission(folder, slurm_mod.stage_parameters(launcher, stage), len(cells), stage)

    def submit(self, cells: Sequence[Cell], launcher: Mapping, manifest: dict,
               stages: Sequence[str] = STAGE_ORDER) -> int:
        import submitit
        from submitit.core.utils import FailedJobError

        folder = Path(manifest["logs"])
        entries = [_cell_entry(c) for c in cells]
        submitted: list[str] = []
        previous: list[str] | None = None
        try:
            for stage in stages:
                params = slurm_mod.stage_parameters(launcher, stage)
                if previous is not None:
                    params["dependency"] = slurm_mod.dependency_on(previous)
                    params["additional_parameters"] = {**params.get("additional_parameters", {}),
                                                       "kill-on-invalid-dep": "yes"}
                executor = submitit.SlurmExecutor(folder=folder,
                                                  max_num_timeout=int(launcher["slurm"]["max_num_timeout"]))
                executor.update_parameters(**params)
                with executor.batch():
                    jobs = [executor.submit(StageJob(stage, c.config, manifest["cwd"])) for c in cells]
                previous = [j.job_id for j in jobs]
                submitted += previous
                for entry, job in zip(entries, jobs):
                    entry["jobs"][stage] = {"job_id": job.job_id, "stdout": str(job.paths.stdout),
                                            "stderr": str(job.paths.stderr)}
        except FailedJobError as exc:
            # Leave nothing half-submitted: a stage without its successor would only waste the queue.
            slurm_mod.cancel(submitted)
            raise slurm_mod.SlurmRefused(f"sbatch failed, nothing was left queued: "
                                         f"{slurm_mod.slurm_reason(str(exc))}") from None
        manifest["cells"] = entries
        write_manifest(manifest)
        return 0


class LocalBackend:
    name = "local"

    def preflight(self) -> None:
        return None

    def job_states(self, job_ids: Sequence[str]) -> dict[str, str]:
        return {}  # the manifest holds the outcome of local stages

    def check(self, cells: Sequence[Cell], launcher: Mapping, folder: Path,
              stages: Sequence[str] = STAGE_ORDER) -> None:
        return None

    def submit(self, cells: Sequence[Cell], launcher: Mapping, manifest: dict,
               stages: Sequence[str] = STAGE_ORDER) -> int:
        logs = Path(manifest["logs"])
        logs.mkdir(parents=True, exist_ok=True)
        keep_going = bool(launcher.get("keep_going", True))
        failed = 0
        for index, cell in enumerate(cells):
            entry = _cell_entry(cell)
            manifest["cells"].append(entry)
            for stage in stages:
                log_path = logs / f"{cell.run_id}.{cell.ident.eval_hash}.{stage}.log"
                job = {"job_id": f"local-{manifest['id']}-{index}", "stdout": str(log_path),
                       "stderr": str(log_path), "state": "RUNNING"}
                entry["jobs"][stage] = job
                write_manifest(manifest)
                ok = _run_logged(StageJob(stage, cell.config, manifest["cwd"]), log_path)
                job["state"] = "COMPLETED" if ok else "FAILED"
                write_manifest(manifest)
                if not ok:
                    failed += 1
                    print(f"cell {cell.key} failed at {stage}; log: {log_path}")
                    break
            if failed and not keep_going:
                break
        return 1 if failed else 0


def _run_logged(job: StageJob, log_path: Path) -> bool:
    """Run one stage here, its log records (and a traceback on failure) going to ``log_path``."""
    handler = logging.FileHandler(log_path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    old_level = root.level
    root.setLevel(min(old_level, logging.INFO) if old_level else logging.INFO)
    try:
        job()
        return True
    except Exception:  # recorded in the manifest and the log; the next cell still runs
        with open(log_path, "a", encoding="utf-8") as fh:
            fh.write(traceback.format_exc())
        return False
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        handler.close()


BACKENDS = {"slurm": SlurmBackend(), "local": LocalBackend()}


def backend_for(name: str):
    if name not in BACKENDS:
        raise ValueError(f"launcher={name} cannot submit a grid; valid: {', '.join(BACKENDS)}")
    return BACKENDS[name]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
