"""Result records (schema 2): identity-named files, validation, nothing replaced, refusal of edited records."""
import json
import math

import pytest

from benchmark import results as R
from record_factory import make_record


def test_write_and_read_back_under_the_identity_name(tmp_path):
    rec = make_record("method=dit")
    path = R.write_record(rec, tmp_path)
    assert path == tmp_path / "runs" / rec["run_id"] / f"{rec['eval_id']}.json"
    assert rec["run_id"].startswith("dit-debug-p2-digits8-s0-") and rec["run_id"].endswith(rec["identity"]["train_hash"])
    assert rec["eval_id"].startswith("0001500-ddim50-cfg1.5-n300-")
    assert json.loads(path.read_text()) == rec
    other = make_record("method=dit", "train.iterations=60", "sample.num_samples=64")
    R.write_record(other, tmp_path)
    loaded = R.load_records(tmp_path)
    assert {(r["run_id"], r["eval_id"]) for r in loaded} == {(rec["run_id"], rec["eval_id"]),
                                                              (other["run_id"], other["eval_id"])}
    assert rec["run_id"] != other["run_id"]
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".")]  # no temporary files left


def test_a_record_is_never_replaced(tmp_path):
    rec = make_record()
    path = R.write_record(rec, tmp_path)
    again = dict(rec, metrics={**rec["metrics"], "fid": 1.0})
    with pytest.raises(R.RecordExists, match="overwrite=true"):
        R.write_record(again, tmp_path)
    assert json.loads(path.read_text())["metrics"]["fid"] == rec["metrics"]["fid"]


def test_derived_fields_come_from_the_identity():
    rec = make_record("method=switch_dit", "seed=3", "sample.steps=20", "train.iterations=40")
    assert (rec["method"], rec["size"], rec["seed"], rec["sampling_steps"], rec["iterations"]) == \
        ("switch_dit", "debug", 3, 20, 40)
    assert rec["identity"]["train"]["method"]["name"] == "switch_dit"


def test_load_records_empty_dir(tmp_path):
    assert R.load_records(tmp_path) == []


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nan_metric_is_refused(tmp_path, bad):
    rec = make_record()
    rec["metrics"]["fid"] = bad
    with pytest.raises(ValueError, match="metrics.fid"):
        R.write_record(rec, tmp_path)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*.json"))


def test_missing_field_named(tmp_path):
    rec = make_record()
    del rec["seed"]
    with pytest.raises(ValueError, match="seed"):
        R.write_record(rec, tmp_path)


def test_wrong_type_named(tmp_path):
    with pytest.raises(ValueError, match="iterations"):
        R.write_record(dict(make_record(), iterations="10"), tmp_path)
    with pytest.raises(ValueError, match="iterations"):
        R.write_record(dict(make_record(), iterations=True), tmp_path)


def test_null_metric_needs_reason(tmp_path):
    rec = make_record(metrics_extra={"inception_score": None})
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
        R.write_record(dict(make_record(), run_id=run_id), tmp_path)


def test_absolute_artifact_path_refused(tmp_path):
    rec = make_record(artifacts={"sample_grid": str(tmp_path / "g.png")})
    with pytest.raises(ValueError, match="relative"):
        R.write_record(rec, tmp_path)


@pytest.mark.parametrize("edit, message", [
    (lambda r: r.update(iterations=400000), "disagrees with its identity"),                    # a plain field
    (lambda r: r["identity"]["train"]["train"].update(lr=0.5), "training hash .* does not match"),
    (lambda r: r["identity"]["eval"].update(num_fid_samples=50000), "evaluation hash .* does not match"),
    (lambda r: r.update(schema=1), "schema 1 is not supported"),
])
def test_hand_edited_records_are_refused_naming_the_file(tmp_path, edit, message):
    rec = make_record()
    path = R.write_record(rec, tmp_path)
    edited = json.loads(path.read_text())
    edit(edited)
    path.write_text(json.dumps(edited))
    with pytest.raises(ValueError, match=f"{path.name} refused: .*{message}"):
        R.load_records(tmp_path)
    records, refused = R.scan_records(tmp_path)
    assert records == [] and len(refused) == 1 and str(path) in refused[0]


def test_a_record_under_another_name_is_refused(tmp_path):
    rec = make_record()
    path = R.write_record(rec, tmp_path)
    moved = path.with_name("0001500-ddim50-cfg1.5-n300-0000000000.json")
    path.rename(moved)
    with pytest.raises(ValueError, match="its name is not its identity's"):
        R.load_records(tmp_path)


def test_load_records_names_corrupt_file(tmp_path):
    (tmp_path / "runs" / "r").mkdir(parents=True)
    (tmp_path / "runs" / "r" / "broken.json").write_text("{not json")
    with pytest.raises(ValueError, match="broken.json"):
        R.load_records(tmp_path)


def test_copy_artifact(tmp_path):
    src = tmp_path / "src.jsonl"
    src.write_text('{"step": 1}\n')
    rel = R.copy_artifact(src, tmp_path / "res", "run1", "metrics.jsonl", eval_id="e1")
    assert rel == "artifacts/run1/e1/metrics.jsonl"
    assert (tmp_path / "res" / rel).read_text() == '{"step": 1}\n'
    with pytest.raises(ValueError, match="name"):
        R.copy_artifact(src, tmp_path / "res", "run1", "../x")
    with pytest.raises(ValueError, match="not a file"):
        R.copy_artifact(tmp_path / "nope", tmp_path / "res", "run1", "x")
