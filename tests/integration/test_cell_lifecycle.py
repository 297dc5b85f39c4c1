"""What train, run and submit do with a cell's identity: continue, skip a finished cell, keep other
settings beside it, move aside on overwrite, refuse to overwrite a cell a submission still runs."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from benchmark import cell, identity
from benchmark.config import ConfigError, compose
from benchmark.launch import manifest as mf
from benchmark.launch.submit import submit_grid


def tiny(tmp: Path, *extra: str) -> list[str]:
    return [f"paths.runs={tmp}/runs", f"paths.cache={tmp}/cache", f"paths.results={tmp}/results",
            f"paths.reports={tmp}/reports", "train.global_batch_size=8", "train.progress=false",
            "train.iterations=3", *extra]


def test_training_continues_finishes_and_refuses_another_protocol(tmp_path, capsys):
    from benchmark.train import train

    first = train(compose(tiny(tmp_path, "train.ckpt_every=1")))
    folder = first.run_dir
    assert json.loads((folder / identity.IDENTITY_FILE).read_text())["train_hash"] == folder.name.rsplit("-", 1)[1]
    stamp = first.checkpoint.stat().st_mtime_ns
    again = train(compose(tiny(tmp_path, "train.ckpt_every=1")))           # finished: nothing runs
    assert again.finished_before and again.checkpoint == first.checkpoint
    assert first.checkpoint.stat().st_mtime_ns == stamp and "is finished" in capsys.readouterr().out
    # A checkpoint of another protocol cannot be continued (only train.iterations may differ).
    with pytest.raises(ValueError, match=r"another protocol \(train.lr: checkpoint 0.001 vs config 0.002"):
        train(compose(tiny(tmp_path, "train.lr=0.002", f"train.resume={first.checkpoint}")))


def test_run_skips_a_finished_cell_and_overwrite_moves_it_aside(tmp_path, capsys):
    from benchmark.pipeline import main as run_main

    args = tiny(tmp_path, "method=dit", "sample.num_samples=4", "sample.per_proc_batch_size=4", "sample.steps=2",
                "eval.reference_max_images=16", "eval.metrics=[fid]")
    record = run_main(compose(args))
    content = record.read_bytes()
    assert run_main(compose(args)) == record and record.read_bytes() == content
    assert "finished:" in capsys.readouterr().out
    # Other settings: another record beside the first, never in its place.
    other = run_main(compose([*args, "train.iterations=4"]))
    assert other != record and other.parent != record.parent and record.read_bytes() == content
    # overwrite=true: the old files move aside, the cell runs again.
    redone = run_main(compose([*args, "overwrite=true"]))
    assert redone == record
    aside = list((tmp_path / "results" / ".replaced").glob(f"*/runs/{record.parent.name}/{record.name}"))
    assert len(aside) == 1 and aside[0].read_bytes() == content
    assert list((tmp_path / "runs" / ".replaced").glob(f"*/{record.parent.name}/checkpoints/0000003.pt"))


def test_submit_at_other_settings_runs_and_overwrite_of_a_running_cell_is_refused(tmp_path, capsys):
    args = ["launcher=local", *tiny(tmp_path, "method=dit", "sample.num_samples=4", "sample.per_proc_batch_size=4",
                                      "sample.steps=2", "eval.reference_max_images=16", "eval.metrics=[fid]")]
    first = submit_grid(args, quiet=True)
    assert first["exit_code"] == 0
    again = submit_grid([*args, "train.iterations=4"], quiet=True)     # other settings: not "finished"
    assert again is not None and again["cells"][0]["key"] != first["cells"][0]["key"]
    assert submit_grid([*args, "train.iterations=4"]) is None
    assert "finished" in capsys.readouterr().out
    # A submission still running the cell: overwrite=true is refused, nothing moved.
    live = mf.new_submission(tmp_path / "runs", "local", args, str(tmp_path))
    live["created_ts"] += 10
    live["cells"] = [dict(first["cells"][0], jobs={"train": {"job_id": "j", "state": "RUNNING", "stderr": ""}})]
    live["pid"] = os.getpid()
    mf.write_manifest(live)
    with pytest.raises(ConfigError, match="overwrite=true on cell .* a submission is still running"):
        submit_grid([*args, "overwrite=true"], quiet=True)
    assert not (tmp_path / "runs" / ".replaced").exists()
    assert cell.record_of(compose(args)).is_file()


