"""Pre-emption without a cluster: deferred signals, and a real submitit requeue of the train stage.

submitit's LocalExecutor runs the job in a subprocess with the same signal handling as on
SLURM (``checkpoint_and_try_requeue`` on SIGUSR2) and restarts it when it asks for a
requeue, so the whole chain deferred signal -> step-boundary checkpoint -> ``checkpoint()``
-> requeue -> resume runs here for real.
"""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import torch

from benchmark import preempt
from benchmark.launch.grid import build_grid
from benchmark.launch.stages import StageJob, preempt_signal, read_attempts

ROOT = Path(__file__).resolve().parents[2]


def test_signal_is_held_until_complete_then_reaches_the_original_handler():
    calls = []
    previous = signal.signal(signal.SIGUSR2, lambda num, frame: calls.append(num))
    try:
        preempt.defer(signal.SIGUSR2)
        os.kill(os.getpid(), signal.SIGUSR2)
        time.sleep(0.05)
        assert calls == [] and preempt.requested()
        preempt.complete()
        assert calls == [signal.SIGUSR2] and not preempt.requested()
        preempt.restore()
        os.kill(os.getpid(), signal.SIGUSR2)
        time.sleep(0.05)
        assert calls == [signal.SIGUSR2, signal.SIGUSR2]  # the original handler is back
    finally:
        preempt.restore()
        signal.signal(signal.SIGUSR2, previous)


def test_the_preempt_signal_is_submitits():
    assert preempt_signal() == signal.SIGUSR2


def _states(path: Path) -> dict:
    payload = torch.load(path, map_location="cpu", weights_only=True)
    return {"model": payload["model"], "ema": payload["ema"], "step": payload["step"]}


def _wait(predicate, timeout: float, what: str, poll: float = 0.05):
    end = time.time() + timeout
    while time.time() < end:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _children(pid: int) -> list[int]:
    """Child processes of ``pid`` (Linux /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def test_train_stage_interrupted_by_submitit_requeues_and_matches_an_uninterrupted_run(tmp_path, monkeypatch):
    import submitit

    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the job and the reference run use one thread each

    n = 150
    common = [f"paths.runs={tmp_path}/runs", f"paths.cache={tmp_path}/cache", f"paths.results={tmp_path}/res",
              f"train.iterations={n}", f"train.ckpt_every={n // 2}", "train.global_batch_size=8",
              "train.log_every=1", "train.progress=false"]
    (job_cell,) = build_grid([*common, "run_name=requeued"])
    (ref_cell,) = build_grid([*common, "run_name=straight"])
    # The job waits at its mid-run checkpoint (the run folder's PAUSE file) until it is signalled,
    # so the signal lands mid-run however fast this machine trains.
    job_cell.run_dir.mkdir(parents=True)
    (job_cell.run_dir / "PAUSE").touch()

    executor = submitit.LocalExecutor(folder=tmp_path / "logs")
    executor.update_parameters(timeout_min=10)
    job = executor.submit(StageJob("train", job_cell.config, str(ROOT)))
    _wait((job_cell.run_dir / "PAUSED").exists, 300, "the job to hold at its mid-run checkpoint", poll=0.1)
    # SIGUSR2 to the task, as SLURM sends before a time limit or a pre-emption. (submitit's
    # LocalJob._interrupt signals its controller process, which does not forward USR2.)
    (task,) = _children(job._process.pid)
    os.kill(task, preempt_signal())
    _wait(lambda: read_attempts(job_cell.run_dir, "train"), 300, "the interrupted attempt", poll=0.1)
    (job_cell.run_dir / "PAUSE").unlink()  # the requeued job resumes past the only boundary that pauses
    summary = job.result()

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        StageJob("train", ref_cell.config, str(ROOT))()
    finally:
        torch.set_num_threads(threads)

    attempts = read_attempts(job_cell.run_dir, "train")
    assert [a["outcome"] for a in attempts] == ["interrupted", "completed"]
    signal_ckpt = Path(attempts[0]["checkpoint"])
    step = _states(signal_ckpt)["step"]
    assert step == n // 2, "the signal checkpoint is written at the step boundary where the job waited"
    assert attempts[1]["resumed_from"] == str(signal_ckpt)
    assert summary["step"] == n

    a = _states(job_cell.run_dir / "checkpoints" / f"{n:07d}.pt")
    b = _states(ref_cell.run_dir / "checkpoints" / f"{n:07d}.pt")
    assert a["step"] == b["step"] == n
    for part in ("model", "ema"):
        for key in b[part]:
            torch.testing.assert_close(a[part][key], b[part][key], rtol=0, atol=1e-6, msg=f"{part}.{key}")
