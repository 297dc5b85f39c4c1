"""Talking to SLURM: is a controller there, what it allows, stage resources, job states.

* ``require_cluster()`` refuses with one line when ``sbatch``/``srun`` are missing or no
  controller answers ``scontrol ping``.
* ``stage_parameters(launcher, stage)`` maps ``launcher.slurm.*`` and
  ``launcher.stages.<stage>.*`` to submitit's ``SlurmExecutor`` parameters (one rank per
  GPU, ``nodes`` for multi-node training, ``--signal=USR2@signal_delay_s``).
* ``test_submission`` renders the exact sbatch script submitit would submit and hands it
  to ``sbatch --test-only``, so an unknown partition, account or QOS, or resources no node
  has, are refused with SLURM's own words before anything is queued.
* ``job_states`` reads states from ``squeue`` (live jobs) and ``sacct`` (finished ones);
  the parsers are pure functions of the command output.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Iterable, Mapping

from benchmark.config import ConfigError


class SlurmUnavailable(ValueError):
    """No usable SLURM here (binaries or controller missing); one line for the CLI."""


class SlurmRefused(ValueError):
    """SLURM refused a submission; the message carries SLURM's own reason."""


def _run(cmd: list[str], timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def slurm_reason(text: str) -> str:
    """The informative line of an sbatch/scontrol error message, without the tool prefix."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    if not lines:
        return "no message"
    # sbatch prints "sbatch: error: Batch job submission failed: <reason>" or "allocation failure: <reason>".
    for line in reversed(lines):
        m = re.search(r"(?:submission failed|allocation failure):\s*(.*)", line)
        if m:
            return m.group(1)
    return re.sub(r"^(sbatch|scontrol|squeue|sacct|srun):\s*(error:\s*)?", "", lines[-1])


def require_cluster() -> None:
    """Raise SlurmUnavailable unless sbatch/srun/scontrol exist and a controller answers."""
    missing = [tool for tool in ("sbatch", "srun", "scontrol", "sacct") if shutil.which(tool) is None]
    if missing:
        raise SlurmUnavailable(
            f"launcher=slurm needs a SLURM cluster, but {', '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not on PATH here; use launcher=local to run the grid "
            "on this machine")
    try:
        ping = _run(["scontrol", "ping"], timeout=20)
    except subprocess.TimeoutExpired:
        raise SlurmUnavailable("no SLURM controller answered `scontrol ping` within 20 s; "
                               "use launcher=local to run the grid on this machine") from None
    if ping.returncode != 0 or "UP" not in ping.stdout:
        said = slurm_reason(ping.stdout + ping.stderr)
        raise SlurmUnavailable(f"no SLURM controller answers `scontrol ping` ({said}); "
                               "use launcher=local to run the grid on this machine")


def cluster_config() -> dict[str, str]:
    """``scontrol show config`` as a dict (KEY -> value string)."""
    out = _run(["scontrol", "show", "config"]).stdout
    return parse_show_config(out)


def parse_show_config(text: str) -> dict[str, str]:
    conf = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() and " " not in key.strip():
            conf[key.strip()] = value.strip()
    return conf


def max_array_size(conf: Mapping[str, str]) -> int:
    """Largest array a submission may use: task indices run 0..MaxArraySize-1 (SLURM default 1001)."""
    value = conf.get("MaxArraySize", "1001").split()[0]
    return int(value) if value.isdigit() else 1001


def check_array_size(n: int, limit: int) -> None:
    if n > limit:
        raise ConfigError(
            f"the grid has {n} cells to submit, but this cluster's MaxArraySize={limit} allows "
            f"at most {limit} tasks per job array; submit the grid in parts (e.g. one size or seed at a time)")


# --------------------------------------------------------------------------------------
# Resources

def _gpus(launcher: Mapping, stage: str) -> int:
    node_gpus = int(launcher["slurm"]["gpus_per_node"] or 0)
    value = launcher["stages"][stage].get("gpus_per_node")
    if value is None:
        # Training and sampling use every GPU of the node; evaluation needs one.
        return min(node_gpus, 1) if stage == "evaluate" else node_gpus
    return int(value)


def stage_parameters(launcher: Mapping, stage: str) -> dict:
    """submitit ``SlurmExecutor.update_parameters`` keywords for one stage (None values dropped)."""
    slurm, res = launcher["slurm"], launcher["stages"][stage]
    gpus = _gpus(launcher, stage)
    tasks = res.get("tasks_per_node")
    tasks = max(gpus, 1) if tasks is None else int(tasks)
    params = {
        "job_name": f"bench-{stage}",
        "partition": slurm.get("partition"),
        "account": slurm.get("account"),
        "qos": slurm.get("qos"),
        "constraint": slurm.get("constraint"),
        "exclude": slurm.get("exclude"),
        "time": int(res["time_min"]),
        "nodes": int(res.get("nodes") or 1),
        "ntasks_per_node": tasks,
        "gpus_per_node": gpus or None,  # no GRES request at all on CPU-only cells
        "cpus_per_task": res.get("cpus_per_task"),
        "mem": f"{res['mem_gb']}GB" if res.get("mem_gb") is not None else None,
        "signal_delay_s": int(slurm["signal_delay_s"]),
        "array_parallelism": int(slurm["array_parallelism"]),
        "setup": list(slurm.get("setup") or []) or None,
        "srun_args": list(slurm.get("srun_args") or []) or None,
        "additional_parameters": dict(slurm.get("additional") or {}) or None,
    }
    return {k: v for k, v in params.items() if v is not None}


def dependency_on(job_ids: list[str]) -> str:
    """SLURM dependency making each task wait for the same task of the previous stage's array."""
    if len(job_ids) == 1 and "_" not in job_ids[0]:
        return f"afterok:{job_ids[0]}"
    return f"aftercorr:{job_ids[0].split('_')[0]}"


def sbatch_script(folder: Path, params: Mapping, num_tasks: int) -> str:
    """The sbatch script submitit would write for these parameters (an array when num_tasks > 1)."""
    from submitit.slurm.slurm import _make_sbatch_string

    extra = {"map_count": num_tasks} if num_tasks > 1 else {}
    return _make_sbatch_string(command="true", folder=folder, **params, **extra)


def test_submission(folder: Path, params: Mapping, num_tasks: int, stage: str) -> None:
    """``sbatch --test-only`` on the real script: SLURM's refusal becomes one SlurmRefused line."""
    with tempfile.NamedTemporaryFile("w", suffix=".sh", prefix=".test_submit_", delete=False) as fh:
        fh.write(sbatch_script(folder, params, num_tasks))
        script = fh.name
    try:
        out = _run(["sbatch", "--test-only", script], timeout=60)
    finally:
        Path(script).unlink(missing_ok=True)
    if out.returncode != 0:
        keys = ("partition", "account", "qos", "constraint", "nodes", "ntasks_per_node", "gpus_per_node",
                "cpus_per_task", "mem", "time")
        shown = ", ".join(f"{k}={params[k]}" for k in keys if k in params)
        raise SlurmRefused(f"SLURM refused the {stage} stage ({shown}): {slurm_reason(out.stdout + out.stderr)}")


# --------------------------------------------------------------------------------------
# Job states

# SLURM job state -> the cell-level word status shows.
STATE_CLASS = {
    "PENDING": "pending", "REQUEUED": "pending", "REQUEUE_HOLD": "pending", "REQUEUE_FED": "pending",
    "RESV_DEL_HOLD": "pending", "CONFIGURING": "pending", "SUSPENDED": "pending", "RESIZING": "running",
    "RUNNING": "running", "COMPLETING": "running", "SIGNALING": "running", "STAGE_OUT": "running",
    "STOPPED": "running", "SPECIAL_EXIT": "failed",
    "COMPLETED": "completed",
    "FAILED": "failed", "CANCELLED": "failed", "TIMEOUT": "failed", "OUT_OF_MEMORY": "failed",
    "NODE_FAIL": "failed", "PREEMPTED": "failed", "BOOT_FAIL": "failed", "DEADLINE": "failed",
    "REVOKED": "failed",
}


def state_class(state: str) -> str:
    return STATE_CLASS.get(state.split()[0].rstrip("+") if state else "", "unknown")


def _expand_ids(job_id: str) -> list[str]:
    """'12_[3-5,7%2]' -> ['12_3', '12_4', '12_5', '12_7']; plain ids unchanged."""
    m = re.fullmatch(r"(\d+)_\[([^\]]+)\]", job_id)
    if not m:
        return [job_id]
    base, spec = m.group(1), m.group(2).split("%")[0]
    out = []
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        out += [f"{base}_{i}" for i in range(int(lo), int(hi or lo) + 1)]
    return out


def parse_states(text: str) -> dict[str, str]:
    """Lines 'JOBID|STATE' (sacct -P / squeue -o '%i|%T') -> {job id: state}; steps (123.batch) skipped."""
    states: dict[str, str] = {}
    for line in text.splitlines():
        job_id, sep, state = line.strip().partition("|")
        if not sep or not job_id or "." in job_id or job_id == "JobID":
            continue
        for jid in _expand_ids(job_id):
            states[jid] = state.split()[0] if state.strip() else "UNKNOWN"
    return states


def job_states(job_ids: Iterable[str]) -> dict[str, str]:
    """Current SLURM state of each job id ('123' or '123_4'); 'UNKNOWN' when SLURM knows none."""
    job_ids = sorted(set(job_ids))
    if not job_ids:
        return {}
    bases = sorted({j.split("_")[0] for j in job_ids})
    states: dict[str, str] = {}
    # With -j, sacct searches from the epoch, not only today.
    cmd = ["sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j", ",".join(bases)]
    try:
        acct = _run(cmd, timeout=60)
        if acct.returncode == 0:
            states.update(parse_states(acct.stdout))
        # Live jobs: the controller is ahead of the accounting database.
        queue = _run(["squeue", "-h", "-r", "--states=all", "-o", "%i|%T"], timeout=60)
        if queue.returncode == 0:
            live = parse_states(queue.stdout)
            states.update({j: s for j, s in live.items() if j.split("_")[0] in bases})
    except (OSError, subprocess.TimeoutExpired):
        pass
    return {j: states.get(j, "UNKNOWN") for j in job_ids}


def cancel(job_ids: Iterable[str]) -> None:
    ids = sorted({j.split("_")[0] for j in job_ids})
    if ids:
        _run(["scancel", *ids])
