"""Result records: validation, atomic writing, loading, artifacts, helpers."""
import json
import math
import os
from pathlib import Path

import pytest

from benchmark import results as R


def make_record(run_id="dit-S-digits-seed0", **over):
    rec = {
        "schema": 1,
        "run_id": run_id,
        "method": "dit",
        "size": "S",
        "patch_size": 2,
        "dataset": "digits",
        "image_size": 8,
        "iterations": 1000,
        "global_batch_size": 64,
        "seed": 0,
        "sampler": "ddpm",
        "sampling_steps": 250,
        "cfg_scale": 1.5,
        "num_samples": 500,
        "autoencoder": None,
        "evaluation": {
            "feature_extractor": "inception-v3-compat",
            "weights": "/x/w.pt",
            "weights_sha256": "ab" * 32,
            "reference": "digits-8",
            "num_samples": 500,
        },
        "metrics": {
            "fid": 12.5,
            "inception_score": None,
            "inception_score_unavailable": "no logits",
            "precision": 0.5,
            "recall": 0.4,
        },
        "training": {"final_loss": 0.1, "steps_per_sec": 3.0},
        "artifacts": {"loss_curve": "artifacts/x/loss.png", "diagnostics": {"mask": "artifacts/x/m.png"}},
        "wall_time_s": {"train": 1.0, "sample": 2.0, "evaluate": 3.0, "total": 6.0},
        "hardware": {"device": "cpu", "name": "x", "count": 1, "torch": "2"},
        "git_commit": "abc",
        "created": "2025-01-01T00:00:00Z",
    }
    rec.update(over)
    return rec


def test_write_and_load_roundtrip(tmp_path):
    rec = make_record()
    path = R.write_record(rec, tmp_path)
    assert path == tmp_path / "runs" / "dit-S-digits-seed0.json"
    assert json.loads(path.read_text()) == rec
    R.write_record(make_record("a-first"), tmp_path)
    loaded = R.load_records(tmp_path)
    assert [r["run_id"] for r in loaded] == ["a-first", "dit-S-digits-seed0"]
    # no temporary files left behind by the atomic write
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["a-first.json", "dit-S-digits-seed0.json"]


def test_load_records_empty_dir(tmp_path):
    assert R.load_records(tmp_path) == []


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nan_metric_is_refused(tmp_path, bad):
    rec = make_record()
    rec["metrics"]["fid"] = bad
    with pytest.raises(ValueError, match="metrics.fid"):
        R.write_record(rec, tmp_path)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_missing_field_named(tmp_path):
    rec = make_record()
    del rec["seed"]
    with pytest.raises(ValueError, match="seed"):
        R.write_record(rec, tmp_path)


def test_wrong_type_named(tmp_path):
    with pytest.raises(ValueError, match="iterations"):
        R.write_record(make_record(iterations="10"), tmp_path)
    with pytest.raises(ValueError, match="iterations"):
        R.write_record(make_record(iterations=True), tmp_path)


def test_null_metric_needs_reason(tmp_path):
    rec = make_record()
    del rec["metrics"]["inception_score_unavailable"]
    with pytest.raises(ValueError, match="inception_score_unavailable"):
        R.write_record(rec, tmp_path)


def test_evaluation_provenance_required(tmp_path):
    rec = make_record()
    del rec["evaluation"]["weights_sha256"]
    with pytest.raises(ValueError, match="weights_sha256"):
        R.write_record(rec, tmp_path)


@pytest.mark.parametrize("run_id", ["../evil", "a/b", "", ".hidden", "x" * 201])
def test_bad_run_id(tmp_path, run_id):
    with pytest.raises(ValueError, match="run_id"):
        R.write_record(make_record(run_id=run_id), tmp_path)


def test_absolute_artifact_path_refused(tmp_path):
    rec = make_record(artifacts={"sample_grid": str(tmp_path / "g.png")})
    with pytest.raises(ValueError, match="relative"):
        R.write_record(rec, tmp_path)


def test_load_records_names_corrupt_file(tmp_path):
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "broken.json").write_text("{not json")
    with pytest.raises(ValueError, match="broken.json"):
        R.load_records(tmp_path)


def test_overwrite_is_atomic_replace(tmp_path):
    R.write_record(make_record(), tmp_path)
    rec = make_record()
    rec["metrics"]["fid"] = 1.0
    p = R.write_record(rec, tmp_path)
    assert json.loads(p.read_text())["metrics"]["fid"] == 1.0


def test_copy_artifact(tmp_path):
    src = tmp_path / "src.jsonl"
    src.write_text('{"step": 1}\n')
    rel = R.copy_artifact(src, tmp_path / "res", "run1", "metrics.jsonl")
    assert rel == "artifacts/run1/metrics.jsonl"
    assert (tmp_path / "res" / rel).read_text() == '{"step": 1}\n'
    with pytest.raises(ValueError, match="name"):
        R.copy_artifact(src, tmp_path / "res", "run1", "../x")
    with pytest.raises(ValueError, match="not a file"):
        R.copy_artifact(tmp_path / "nope", tmp_path / "res", "run1", "x")


def test_new_record_and_helpers(tmp_path):
    rec = R.new_record(run_id="r")
    assert rec["schema"] == R.SCHEMA_VERSION and rec["created"].endswith("Z")
    hw = R.hardware_info("cpu")
    assert hw["device"] == "cpu" and hw["count"] == 1 and "torch" in hw
    # not a git repo -> None
    assert R.git_commit(tmp_path) is None
    head = R.git_commit()
    assert head is None or len(head.split("-")[0]) == 40
