"""Cell status from manifests + job states (pure), and manifest files (atomic, newest wins)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from benchmark.launch import manifest as mf
from benchmark.launch.status import derive, format_table, grid_statuses, summary_line


def entry(states: dict[str, str] | None = None, local: bool = False, pid: int | None = None):
    """A manifest entry with jobs 7_0 / 8_0 / 9_0 for train / sample / evaluate."""
    jobs = {}
    for stage, jid in (("train", "7_0"), ("sample", "8_0"), ("evaluate", "9_0")):
        job = {"job_id": jid, "stdout": f"/logs/{jid}.out", "stderr": f"/logs/{jid}.err"}
        if local:
            job["state"] = (states or {}).get(stage, "PENDING")
        jobs[stage] = job
    manifest = {"id": "x", "launcher": "local" if local else "slurm", "host": os.uname().nodename,
                "pid": pid or os.getpid()}
    return manifest, {"key": "r/e", "run_id": "r", "eval_id": "e", "label": "seed=0", "record": "/res/runs/r/e.json",
                      "run_dir": "/runs/r", "jobs": jobs}


def status_of(train, sample, evaluate, record=False):
    states = {"7_0": train, "8_0": sample, "9_0": evaluate}
    return derive("r", "seed=0", entry(), states, record)


@pytest.mark.parametrize("train, sample, evaluate, state, stage, job", [
    ("PENDING", "PENDING", "PENDING", "pending", "train", "7_0"),
    ("RUNNING", "PENDING", "PENDING", "running", "train", "7_0"),
    ("REQUEUED", "PENDING", "PENDING", "pending", "train", "7_0"),     # after the pre-timeout signal
    ("COMPLETED", "PENDING", "PENDING", "pending", "sample", "8_0"),
    ("COMPLETED", "RUNNING", "PENDING", "running", "sample", "8_0"),
    ("COMPLETED", "COMPLETED", "RUNNING", "running", "evaluate", "9_0"),
    # a cancelled train job takes its dependants with it: the cause is the first failed stage
    ("CANCELLED", "CANCELLED", "CANCELLED", "failed", "train", "7_0"),
    ("COMPLETED", "TIMEOUT", "CANCELLED", "failed", "sample", "8_0"),
    ("COMPLETED", "COMPLETED", "FAILED", "failed", "evaluate", "9_0"),
    ("UNKNOWN", "UNKNOWN", "UNKNOWN", "unknown", "train", "7_0"),
])
def test_cell_state_from_stage_states(train, sample, evaluate, state, stage, job):
    s = status_of(train, sample, evaluate)
    assert (s.state, s.stage, s.job_id) == (state, stage, job)
    if state == "failed":
        assert s.log == f"/logs/{job}.err"
    else:
        assert s.log == ""


def test_a_record_means_done_whatever_the_jobs_say():
    assert status_of("CANCELLED", "CANCELLED", "CANCELLED", record=True).state == "done"
    assert derive("r", "seed=0", None, {}, True).state == "done"
    assert derive("r", "seed=0", None, {}, False).state == "not submitted"


def test_jobs_finished_without_a_record_is_a_failure_naming_the_record():
    s = status_of("COMPLETED", "COMPLETED", "COMPLETED")
    assert s.state == "failed" and "/res/runs/r/e.json" in s.detail


def test_local_stage_of_a_dead_submitter_is_failed_not_running():
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = derive("r", "l", entry({"train": "RUNNING"}, local=True), {}, False)
    gone = derive("r", "l", entry({"train": "RUNNING"}, local=True, pid=dead.pid), {}, False)
    assert live.state == "running"
    assert gone.state == "failed" and gone.detail == "CANCELLED" and gone.log == "/logs/7_0.err"


def test_table_shows_the_log_of_failed_cells_only():
    rows = [status_of("CANCELLED", "CANCELLED", "CANCELLED"), status_of("RUNNING", "PENDING", "PENDING")]
    text = format_table(rows)
    assert "CANCELLED: /logs/7_0.err" in text
    assert text.count("/logs/") == 1
    assert summary_line(rows) == "2 cells: 1 running, 1 failed"


def test_manifests_are_atomic_and_the_newest_entry_wins(tmp_path):
    old = mf.new_submission(tmp_path, "slurm", ["seed=0,1"], str(tmp_path))
    old["cells"] = [{"key": "a", "jobs": {"train": {"job_id": "1_0"}}},
                    {"key": "b", "jobs": {"train": {"job_id": "1_1"}}}]
    mf.write_manifest(old)
    new = mf.new_submission(tmp_path, "slurm", ["seed=1"], str(tmp_path))
    new["created_ts"] = old["created_ts"] + 1
    new["cells"] = [{"key": "b", "jobs": {"train": {"job_id": "5"}}}]
    path = mf.write_manifest(new)
    assert json.loads(path.read_text())["id"] == new["id"]
    assert [p.name for p in path.parent.iterdir()] == ["manifest.json"]  # no temp file left
    latest = mf.latest_entries(tmp_path)
    assert latest["a"][1]["jobs"]["train"]["job_id"] == "1_0"
    assert latest["b"][1]["jobs"]["train"]["job_id"] == "5"


def test_an_unreadable_manifest_is_named(tmp_path):
    bad = mf.submissions_dir(tmp_path) / "broken"
    bad.mkdir(parents=True)
    (bad / "manifest.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"unreadable submission manifest .*broken/manifest.json"):
        mf.load_manifests(tmp_path)


def test_status_of_a_runs_folder_with_no_submission_says_so(tmp_path):
    statuses, note = grid_statuses([f"paths.runs={tmp_path}/runs", f"paths.results={tmp_path}/res"])
    assert statuses == [] and note == f"nothing was submitted under {tmp_path}/runs yet"


def test_the_last_error_line_of_a_log(tmp_path):
    from benchmark.launch.status import last_error

    log = tmp_path / "x.err"
    log.write_text("INFO start\nTraceback (most recent call last):\n  File \"a.py\", line 1\n"
                   "benchmark.config.ConfigError: data.path=/nope does not exist; pass an existing image folder\n"
                   "srun: error: node1: task 0: Exited with exit code 1\n")
    assert last_error(log) == "benchmark.config.ConfigError: data.path=/nope does not exist; pass an existing image folder"
    log.write_text("all fine\n")
    assert last_error(log) is None and last_error(tmp_path / "absent") is None
