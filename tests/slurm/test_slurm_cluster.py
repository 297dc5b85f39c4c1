"""End to end on a real SLURM cluster (the single-node one of .ci/slurm/setup.sh).

Debug-size CPU cells go through submit -> job arrays (train -> sample -> evaluate) ->
status -> records. One cell is cancelled mid-training and the grid is submitted again:
every record must land exactly once, finished cells untouched. A one-minute time limit
with a short ``signal_delay_s`` makes SLURM signal the train stage, which checkpoints,
requeues and must end with the weights of an uninterrupted run. Bad input is refused
before anything is queued. Skipped (with the reason) only where no controller answers.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmark import cli
from benchmark.launch import slurm
from benchmark.launch.grid import build_grid
from benchmark.launch.manifest import load_manifests
from benchmark.launch.stages import STAGE_ORDER, StageJob, read_attempts
from benchmark.launch.status import grid_statuses
from benchmark.launch.submit import submit_grid

ROOT = Path(__file__).resolve().parents[2]


def _no_cluster_reason() -> str | None:
    if shutil.which("sbatch") is None:
        return "no SLURM on this machine (sbatch not on PATH); `bash .ci/slurm/setup.sh` as root starts one"
    try:
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"no SLURM controller answers `scontrol ping` ({exc})"
    if "UP" not in ping.stdout:
        return f"no SLURM controller answers `scontrol ping` ({(ping.stdout + ping.stderr).strip()[:200]})"
    return None


REASON = _no_cluster_reason()
pytestmark = [pytest.mark.slurm, pytest.mark.skipif(REASON is not None, reason=REASON or "")]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An ADM-style reference batch with FID statistics only: evaluation skips the reference images."""
    path = tmp_path_factory.mktemp("ref") / "reference.npz"
    np.savez(path, mu=np.zeros(2048), sigma=np.eye(2048))
    return path


def cpu_args(tmp: Path, ref: Path, *extra: str) -> list[str]:
    """A debug-size grid on CPU-only SLURM jobs, one CPU each."""
    args = ["launcher=slurm", "launcher.slurm.gpus_per_node=0", "launcher.slurm.signal_delay_s=30",
            f"paths.runs={tmp}/runs", f"paths.results={tmp}/results", f"paths.reports={tmp}/reports",
            f"paths.cache={tmp}/cache", "train.global_batch_size=8", "train.progress=false", "train.log_every=1",
            "sample.num_samples=8", "sample.steps=4", "sample.per_proc_batch_size=8",
            "eval.metrics=[fid]", f"eval.reference={ref}", "eval.batch_size=8"]
    for stage in STAGE_ORDER:
        args += [f"launcher.stages.{stage}.cpus_per_task=1", f"launcher.stages.{stage}.time_min=10"]
    return args + list(extra)


def job_ids(manifest: dict) -> list[str]:
    return [job["job_id"] for cell in manifest["cells"] for job in cell["jobs"].values()]


def wait_until(predicate, timeout: float, what: str, poll: float = 0.05):
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def wait_finished(ids: list[str], timeout: float) -> dict[str, str]:
    """Block until no job of ``ids`` is pending or running; return their final states."""
    states: dict[str, str] = {}

    def finished() -> bool:
        states.update(slurm.job_states(ids))
        return all(slurm.state_class(s) not in ("pending", "running", "unknown") for s in states.values())

    wait_until(finished, timeout, f"jobs {', '.join(ids)} to finish", poll=1.0)
    return states


def _checkpoint_states(path: Path) -> dict:
    payload = torch.load(path, map_location="cpu", weights_only=True)
    return {"model": payload["model"], "ema": payload["ema"], "step": payload["step"]}


def hold_at_first_checkpoint(run_dir: Path) -> Path:
    """Make the cell's training wait at its first checkpoint boundary (the run folder's PAUSE file)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "PAUSE").touch()
    return run_dir / "PAUSED"


def test_cancelled_cell_resubmitted_lands_every_record_exactly_once(tmp_path, reference, capsys):
    args = cpu_args(tmp_path, reference, "method=dit", "seed=0,1,2", "train.iterations=200", "train.ckpt_every=25")
    # The victim is cancelled while provably mid-training: held at step 25 by its PAUSE file.
    paused = hold_at_first_checkpoint(build_grid(args)[1].run_dir)
    assert cli.main(["submit", *args]) == 0
    (first,) = load_manifests(tmp_path / "runs")
    assert [len(c["jobs"]) for c in first["cells"]] == [3, 3, 3]
    victim = first["cells"][1]
    assert Path(victim["run_dir"]) == paused.parent
    wait_until(paused.exists, 600, f"{paused} (the victim held at its first checkpoint)", poll=0.5)
    assert json.loads(paused.read_text())["step"] == 25
    subprocess.run(["scancel", victim["jobs"]["train"]["job_id"]], check=True)
    states = wait_finished(job_ids(first), 900)
    assert states[victim["jobs"]["train"]["job_id"]] == "CANCELLED"
    assert [p.name for p in (paused.parent / "checkpoints").glob("*.pt")] == ["0000025.pt"]
    (paused.parent / "PAUSE").unlink()

    by_key = {s.key: s for s in grid_statuses(args)[0]}
    others = [c["key"] for c in first["cells"] if c is not victim]
    assert all(by_key[key].state == "done" for key in others), by_key
    cancelled = by_key[victim["key"]]
    assert (cancelled.state, cancelled.stage, cancelled.detail) == ("failed", "train", "CANCELLED")
    assert Path(cancelled.log).is_file()
    capsys.readouterr()
    assert cli.main(["status", *args]) == 0
    table = capsys.readouterr().out
    assert "3 cells: 2 done, 1 failed" in table and cancelled.log in table

    records = tmp_path / "results" / "runs"
    before = {str(p): (p.read_bytes(), p.stat().st_mtime_ns) for p in records.glob("*/*.json")}
    assert sorted(before) == sorted(c["record"] for c in first["cells"] if c is not victim)

    assert cli.main(["submit", *args]) == 0
    out = capsys.readouterr().out
    assert out.count(": finished (") == 2
    second = load_manifests(tmp_path / "runs")[-1]
    assert second["id"] != first["id"] and [c["key"] for c in second["cells"]] == [victim["key"]]
    assert set(wait_finished(job_ids(second), 900).values()) == {"COMPLETED"}

    after = {str(p): (p.read_bytes(), p.stat().st_mtime_ns) for p in records.glob("*/*.json")}
    assert sorted(after) == sorted(c["record"] for c in first["cells"])                 # nothing lost
    assert all(after[name] == before[name] for name in before)                          # nothing rewritten
    assert not [p for p in (tmp_path / "results").rglob("*") if p.name.endswith(".tmp")]
    for cell in first["cells"]:
        record = json.loads(Path(cell["record"]).read_text())
        assert record["run_id"] == cell["run_id"] and record["metrics"]["fid"] is not None
        (samples,) = (Path(cell["run_dir"]) / "samples").iterdir()
        assert sorted(p.name for p in samples.glob("*.png")) == [f"{i:06d}.png" for i in range(8)]
        assert np.load(samples / "samples.npz")["arr_0"].shape == (8, 8, 8, 3)
    resumed = [a for a in read_attempts(Path(victim["run_dir"]), "train") if a["outcome"] == "completed"]
    assert len(resumed) == 1, resumed
    assert resumed[0]["resumed_from"] == str(Path(victim["run_dir"]) / "checkpoints" / "0000025.pt"), \
        "the resubmitted cell continued from its checkpoint"

    assert {s.state for s in grid_statuses(args)[0]} == {"done"}
    assert cli.main(["submit", *args]) == 0
    assert "nothing to submit" in capsys.readouterr().out
    assert len(load_manifests(tmp_path / "runs")) == 2


def test_time_limit_signal_checkpoints_requeues_and_matches_an_uninterrupted_run(tmp_path, reference):
    # slurmctld looks at time limits every 30 s and signals at the first look that falls within
    # signal_delay_s + 30 s of the limit: with a 1-minute limit and a 10 s delay the signal comes
    # 20-50 s after a start. The job waits at its mid-run checkpoint (PAUSE file) until then, so it
    # is signalled mid-run however fast this machine trains; once it has been, PAUSE goes and the
    # requeued job finishes (it resumes past the only boundary that pauses).
    n = 120
    common = cpu_args(tmp_path, reference, f"train.iterations={n}", f"train.ckpt_every={n // 2}")
    limited = [*common, "run_name=limited", "launcher.stages.train.time_min=1", "launcher.slurm.signal_delay_s=10"]
    (cell,) = build_grid(limited)
    hold_at_first_checkpoint(cell.run_dir)
    manifest = submit_grid(limited, stages=("train",), quiet=True)
    (job,) = job_ids(manifest)
    (straight,) = build_grid([*common, "run_name=straight"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        StageJob("train", straight.config, str(ROOT))()  # the uninterrupted reference, meanwhile
    finally:
        torch.set_num_threads(threads)
    run_dir = Path(manifest["cells"][0]["run_dir"])
    assert run_dir == cell.run_dir
    wait_until(lambda: any(a["outcome"] == "interrupted" for a in read_attempts(run_dir, "train")), 600,
               "the paused train stage to be signalled before its time limit and requeued", poll=0.5)
    (run_dir / "PAUSE").unlink()
    assert wait_finished([job], 900)[job] == "COMPLETED"

    attempts = read_attempts(run_dir, "train")
    assert attempts[-1]["outcome"] == "completed" and attempts[-1]["step"] == n
    interrupted = [a for a in attempts if a["outcome"] == "interrupted"]
    assert interrupted, f"the job was never signalled: {attempts}"
    steps = [_checkpoint_states(Path(a["checkpoint"]))["step"] for a in interrupted if a["checkpoint"] != "None"]
    assert steps and all(0 <= s < n for s in steps) and max(steps) > 0
    history = subprocess.run(["sacct", "-D", "-X", "-n", "-P", "-o", "JobID,State", "-j", job.split("_")[0]],
                             capture_output=True, text=True, check=True).stdout
    assert "REQUEUED" in history, history  # SLURM's own record of the requeue

    a = _checkpoint_states(run_dir / "checkpoints" / f"{n:07d}.pt")
    b = _checkpoint_states(straight.run_dir / "checkpoints" / f"{n:07d}.pt")
    assert a["step"] == b["step"] == n
    for part in ("model", "ema"):
        for key in b[part]:
            torch.testing.assert_close(a[part][key], b[part][key], rtol=0, atol=1e-6, msg=f"{part}.{key}")


@pytest.mark.parametrize("extra, message", [
    (["partition=nope"], r"SLURM refused the train stage \(partition=nope, .*\): Invalid partition name specified"),
    (["account=nope"], r"SLURM refused the train stage \(account=nope, .*\): Invalid account"),
    (["qos=nope"], r"SLURM refused the train stage \(qos=nope, .*\): Invalid qos specification"),
    # the default 8-GPU node shape on this GPU-less cluster
    (["launcher.slurm.gpus_per_node=8"], r"SLURM refused the train stage \(.*gpus_per_node=8.*\): "),
    (["launcher.stages.sample.cpus_per_task=64"], r"SLURM refused the sample stage \(.*cpus_per_task=64.*\): "
                                                  "Requested node configuration is not available"),
    (["launcher.stages.train.sec_per_step=2.0", "train.iterations=1000", "train.ckpt_every=500"],
     "time_min=10 min is shorter than one checkpoint interval"),
    (["data=imagenet"], "data.path is required for data=imagenet"),
])
def test_bad_input_is_refused_in_one_line_before_anything_is_queued(tmp_path, reference, capsys, extra, message):
    before = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout
    code = cli.main(["submit", *cpu_args(tmp_path, reference), *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0, err
    assert re.search(message, err), err
    assert not (tmp_path / "runs" / ".submissions").exists()
    assert subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout == before


def test_an_array_larger_than_the_cluster_allows_is_refused(tmp_path, reference, capsys):
    limit = slurm.max_array_size(slurm.cluster_config())
    if limit > 16:
        pytest.skip(f"MaxArraySize={limit}: composing {limit + 1} cells would take too long here")
    seeds = ",".join(str(i) for i in range(limit + 1))
    code = cli.main(["submit", *cpu_args(tmp_path, reference), f"seed={seeds}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0, err
    assert f"{limit + 1} cells to submit, but this cluster's MaxArraySize={limit} allows at most {limit}" in err
    assert not (tmp_path / "runs" / ".submissions").exists()


def test_no_controller_is_one_line(tmp_path, reference, capsys, monkeypatch):
    conf = Path("/etc/slurm/slurm.conf")
    if not conf.is_file():
        pytest.skip("needs the cluster's /etc/slurm/slurm.conf to derive a broken one")
    broken = tmp_path / "slurm.conf"
    lines = [ln for ln in conf.read_text().splitlines() if not ln.startswith("SlurmctldPort")]
    broken.write_text("\n".join(lines + ["SlurmctldPort=9", "MessageTimeout=2"]) + "\n")
    monkeypatch.setenv("SLURM_CONF", str(broken))  # a controller address where nothing listens
    code = cli.main(["submit", *cpu_args(tmp_path, reference)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0, err
    assert "no SLURM controller answers `scontrol ping`" in err and "launcher=local" in err
