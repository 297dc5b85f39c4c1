"""``submit launcher=local``: the SLURM stage callables run here, a failed cell resubmitted, status.

One debug-size cell fails at evaluation (its reference file does not exist), shows as
failed with its log, and is submitted again with the reference fixed: training resumes
from its final checkpoint (no step redone), sampling keeps the PNGs on disk, the record
lands once, and a third submission finds nothing to do.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from benchmark import cli
from benchmark.launch.manifest import load_manifests
from benchmark.launch.stages import read_attempts
from benchmark.launch.status import grid_statuses


def args_for(tmp: Path, reference: Path) -> list[str]:
    return ["launcher=local", "method=dit", f"paths.runs={tmp}/runs", f"paths.results={tmp}/results",
            f"paths.reports={tmp}/reports", f"paths.cache={tmp}/cache", "train.iterations=4",
            "train.global_batch_size=8", "train.progress=false", "sample.num_samples=8", "sample.steps=4",
            "sample.per_proc_batch_size=8", "eval.metrics=[fid]", f"eval.reference={reference}", "eval.batch_size=8"]


def test_local_grid_failure_resubmit_and_skip(tmp_path, capsys):
    missing = tmp_path / "missing.npz"
    args = args_for(tmp_path, missing)
    assert cli.main(["submit", *args]) == 1
    out = capsys.readouterr().out
    (manifest,) = load_manifests(tmp_path / "runs")
    (cell,) = manifest["cells"]
    assert {s: j["state"] for s, j in cell["jobs"].items()} == {"train": "COMPLETED", "sample": "COMPLETED",
                                                                "evaluate": "FAILED"}
    log = Path(cell["jobs"]["evaluate"]["stderr"])
    assert f"failed at evaluate; log: {log}" in out
    assert "eval.reference" in log.read_text()            # the traceback names the bad key
    (status,) = grid_statuses(args)[0]
    assert (status.state, status.stage, status.log) == ("failed", "evaluate", str(log))
    capsys.readouterr()
    assert cli.main(["status", *args]) == 0
    shown = capsys.readouterr().out.splitlines()[-1]      # the failing cell's own error, not just its log
    assert shown.startswith(f"{cell['key']} failed at evaluate: FileNotFoundError: eval.reference=") and \
        "missing.npz" in shown

    run_dir = Path(cell["run_dir"])
    pngs = {p.name: p.stat().st_mtime_ns for p in (run_dir / "samples").glob("*/*.png")}
    assert len(pngs) == 8
    reference = tmp_path / "reference.npz"
    np.savez(reference, mu=np.zeros(2048), sigma=np.eye(2048))
    fixed = args_for(tmp_path, reference)
    assert cli.main(["submit", *fixed]) == 0
    # Another reference is another evaluation protocol: a record of its own, the same training run.
    fixed_cell = load_manifests(tmp_path / "runs")[-1]["cells"][0]
    assert fixed_cell["run_id"] == cell["run_id"] and fixed_cell["eval_id"] != cell["eval_id"]
    record = Path(fixed_cell["record"])
    assert json.loads(record.read_text())["run_id"] == cell["run_id"]
    assert not Path(cell["record"]).exists()
    # training resumed at its final step (nothing redone), the images were not drawn again
    completed = [a for a in read_attempts(run_dir, "train") if a["outcome"] == "completed"]
    assert len(completed) == 2 and completed[1]["resumed_from"] == completed[0]["checkpoint"]
    assert {p.name: p.stat().st_mtime_ns for p in (run_dir / "samples").glob("*/*.png")} == pngs

    (status,) = grid_statuses(fixed)[0]
    assert status.state == "done"
    stamp = record.stat().st_mtime_ns
    capsys.readouterr()
    assert cli.main(["submit", *fixed]) == 0
    assert "nothing to submit" in capsys.readouterr().out
    assert record.stat().st_mtime_ns == stamp and len(load_manifests(tmp_path / "runs")) == 2
    assert [p.name for p in record.parent.glob("*.json")] == [record.name]
