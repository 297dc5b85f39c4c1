"""The three stages of a cell as picklable, requeue-able job callables: train, sample, evaluate.

The same ``StageJob`` objects run inside SLURM jobs (submitit pickles them) and in this
process for ``launcher=local``. Each stage is safe to run again after an interruption:

* train resumes from the run's newest checkpoint; the pre-timeout / pre-emption signal
  (SIGUSR2 under submitit) is deferred to a step boundary by ``benchmark.preempt``, where
  the loop saves a checkpoint and hands the signal to submitit, which calls
  ``StageJob.checkpoint`` and requeues the job;
* sample skips the batches whose PNGs are already on disk;
* evaluate returns the existing record instead of writing it twice.

Every attempt of a stage appends one line (outcome, wall time, job id) to
``<run>/.launch/<stage>.jsonl``; the evaluate stage sums them into the record's wall time.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import socket
import time
from pathlib import Path
from typing import Callable

import submitit
from omegaconf import DictConfig, OmegaConf

from benchmark import preempt

log = logging.getLogger(__name__)


def preempt_signal() -> signal.Signals:
    """The signal submitit asks SLURM to send before a time limit (``SUBMITIT_PREEMPT_SIGNAL``, USR2)."""
    return signal.Signals["SIG" + submitit.JobEnvironment.USR_SIG]


def _rank() -> int:
    return int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")))


def _job_id() -> str | None:
    """The job id as squeue/sacct show it: ARRAY_TASK for array tasks, else SLURM's (or submitit's local) id."""
    env = os.environ
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env.get("SLURM_JOB_ID") or env.get("SUBMITIT_LOCAL_JOB_ID")


def attempts_path(run_dir: Path, stage: str, eval_id: str | None = None) -> Path:
    """Training attempts belong to the run; sampling and evaluation attempts to one evaluation."""
    folder = Path(run_dir) / ".launch"
    return (folder / eval_id if eval_id and stage != "train" else folder) / f"{stage}.jsonl"


def _log_attempt(run_dir: Path, stage: str, eval_id: str, outcome: str, started: float, **extra) -> None:
    if _rank() != 0:
        return
    path = attempts_path(run_dir, stage, eval_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    row = {"stage": stage, "outcome": outcome, "wall_s": time.time() - started, "started": started,
           "host": socket.gethostname(), "job_id": _job_id(), **extra}
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(row, sort_keys=True, default=str) + "\n")


def read_attempts(run_dir: Path, stage: str, eval_id: str | None = None) -> list[dict]:
    path = attempts_path(run_dir, stage, eval_id)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# --------------------------------------------------------------------------------------
# Stage bodies: DictConfig in, a small JSON-able summary out.

def run_train(cfg: DictConfig) -> dict:
    from benchmark.train import train

    # A requeued or resubmitted cell continues where its last attempt saved (train's default).
    preempt.defer(preempt_signal())
    try:
        result = train(cfg)
    finally:
        # A signal that arrived after the last step boundary is dropped: the final checkpoint
        # is written, so finishing now is worth more than a requeue.
        preempt.restore()
    summary = {"checkpoint": str(result.checkpoint), "step": int(result.step),
               "final_loss": result.final_loss, "steps_per_sec": result.steps_per_sec,
               "num_parameters": int(result.num_parameters), "wall_s": result.wall_time_s,
               "resumed_from": str(result.resumed_from) if result.resumed_from else None}
    return summary


def run_sample(cfg: DictConfig) -> dict:
    from benchmark.sample import sample

    result = sample(cfg)
    return {"folder": str(result.folder), "npz": str(result.npz), "num_samples": result.num_samples}


def _stage_wall(run_dir: Path, stage: str, eval_id: str | None = None) -> float | None:
    rows = read_attempts(run_dir, stage, eval_id)
    return sum(float(r["wall_s"]) for r in rows) if rows else None


def run_evaluate(cfg: DictConfig) -> dict:
    from benchmark import cell, identity
    from benchmark.distributed import init_distributed
    from benchmark.pipeline import record_run

    path = cell.record_of(cfg)
    if path.is_file():
        return {"record": str(path), "written": False}
    info = init_distributed()
    if not info.is_main:
        return {"record": str(path), "written": False}
    ident = identity.cell_identity(cfg)
    wall = {"sample": _stage_wall(cell.owner_dir(cfg, ident), "sample", ident.eval_id)}
    written = record_run(cfg, wall=wall)
    return {"record": str(written), "written": True}


STAGES: dict[str, Callable[[DictConfig], dict]] = {
    "train": run_train,
    "sample": run_sample,
    "evaluate": run_evaluate,
}
STAGE_ORDER = tuple(STAGES)


def _match_threads_to_allocation() -> None:
    """Use the CPUs SLURM gave this task, not every core of the node (8 ranks share one node)."""
    cpus = os.environ.get("SLURM_CPUS_PER_TASK")
    if cpus and cpus.isdigit() and "OMP_NUM_THREADS" not in os.environ:
        import torch

        torch.set_num_threads(int(cpus))


class StageJob(submitit.helpers.Checkpointable):
    """One stage of one cell. Picklable: holds the resolved config as plain containers."""

    def __init__(self, stage: str, config: dict, cwd: str) -> None:
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; valid: {', '.join(STAGES)}")
        self.stage = stage
        self.config = config
        self.cwd = cwd

    @property
    def run_name(self) -> str:
        return self.config["run_name"]

    def __call__(self) -> dict:
        from benchmark import cell, identity

        os.chdir(self.cwd)
        _match_threads_to_allocation()
        cfg = OmegaConf.create(self.config)
        ident = identity.cell_identity(cfg)
        run_dir = cell.run_dir(cfg) if self.stage == "train" else cell.owner_dir(cfg, ident)
        started = time.time()
        outcome, extra = "failed", {}
        try:
            extra = STAGES[self.stage](cfg)
            outcome = "completed"
            return extra
        except SystemExit:
            outcome = "interrupted"  # submitit's handler requeued the job and is exiting
            if self.stage == "train":
                from benchmark.checkpoint import latest_checkpoint

                extra = {"checkpoint": str(latest_checkpoint(run_dir))}
            raise
        finally:
            _log_attempt(run_dir, self.stage, ident.eval_id, outcome, started,
                         **{k: v for k, v in extra.items() if k != "wall_s"})

    def checkpoint(self, *args, **kwargs) -> submitit.helpers.DelayedSubmission:
        # The state worth keeping is on disk (checkpoints, PNGs, the record); the requeued job
        # runs the same stage, which resumes from there.
        return submitit.helpers.DelayedSubmission(StageJob(self.stage, self.config, self.cwd))

    def __repr__(self) -> str:
        return f"StageJob({self.stage}, {self.run_name})"
