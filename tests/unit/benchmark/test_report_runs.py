"""Dataset pages: one table per protocol, nothing mixed or hidden, seeds aggregated, intervals, compute, plots."""
from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

import pytest

from benchmark import report as rpt
from benchmark import results as R
from benchmark import runs_report as rr
from benchmark.config import compose
from benchmark.identity import IDENTITY_FILE, run_id
from record_factory import make_record
from md_tables import table_rows

REPO = Path(__file__).resolve().parents[3]


def build(results_dir: Path, reports: Path, *records: dict) -> str:
    for rec in records:
        R.write_record(rec, results_dir)
    rpt.build_report(results_dir, reports)
    return (reports / "digits-8.md").read_text()


def sections(page: str) -> dict[str, str]:
    """'## heading' -> the text under it."""
    parts = re.split(r"^## ", page, flags=re.M)
    return {p.splitlines()[0]: p for p in parts[1:]}


def test_a_run_at_other_settings_gets_its_own_table_and_replaces_nothing(tmp_path):
    results = tmp_path / "results"
    default_dit = make_record("method=dit", fid=31.95)
    dtr = make_record("method=dtr", fid=29.22)
    small = make_record("method=dit", "train.iterations=60", "sample.num_samples=64", "sample.steps=10",
                        "eval.reference_max_images=200", fid=282.16,
                        eval_fields={"reference": "dataset digits first 200", "reference_key": "digits-first200"})
    page = build(results, tmp_path / "reports", default_dit, dtr, small)
    assert len(list((results / "runs").rglob("*.json"))) == 3                # nothing replaced
    protocols = {k: v for k, v in sections(page).items() if k.startswith("Protocol")}
    assert len(protocols) == 2
    full = next(v for k, v in protocols.items() if "FID-300" in k and "step 1,500" in k)
    quick = next(v for k, v in protocols.items() if "FID-64" in k and "step 60" in k)
    assert {r[0]: r[1] for r in table_rows(full)} == {"DiT-debug": "31.95", "DTR-debug": "29.22"}
    assert {r[0]: r[1] for r in table_rows(quick)} == {"DiT-debug": "282.16"}
    assert "ddim 10 steps" in quick and "digits first 200" in quick and "ddim 50 steps" in full
    for rec in (default_dit, dtr, small):                                      # every record in exactly one table
        assert page.count(f"`{rec['run_id']}/{rec['eval_id']}`") == 1


def test_seeds_are_aggregated_and_listed(tmp_path):
    fids = {0: 30.0, 1: 32.5, 2: 35.25}
    recs = [make_record("method=switch_dit", f"seed={s}", fid=f) for s, f in fids.items()]
    page = build(tmp_path / "results", tmp_path / "reports", *recs)
    (row,) = table_rows(sections(page)[next(k for k in sections(page) if k.startswith("Protocol"))])
    mean, std = statistics.mean(fids.values()), statistics.stdev(fids.values())
    assert row[1] == f"{mean:.2f} \u00b1 {std:.2f} (n=3)" == "32.58 \u00b1 2.63 (n=3)"
    assert row[-1] == "0, 1, 2"
    for rec in recs:
        assert f"`{rec['run_id']}/{rec['eval_id']}`" in page                   # the per-seed table


def test_aggregate_against_the_definition():
    values = [24.0, 29.2, 26.5, None]
    mean, std, n = rr.aggregate(values)
    vals = [24.0, 29.2, 26.5]
    assert n == 3 and mean == pytest.approx(sum(vals) / 3)
    assert std == pytest.approx((sum((v - mean) ** 2 for v in vals) / 2) ** 0.5)
    assert rr.aggregate([5.0]) == (5.0, None, 1) and rr.aggregate([None]) == (None, None, 0)


def test_one_seed_shows_its_bootstrap_interval(tmp_path):
    rec = make_record("method=dit", fid=24.03,
                      metrics_extra={"fid_ci95": [21.1, 27.4], "precision_ci95": [0.4, 0.5], "recall_ci95": [0.7, 0.8]})
    page = build(tmp_path / "results", tmp_path / "reports", rec)
    (row,) = table_rows(sections(page)[next(k for k in sections(page) if k.startswith("Protocol"))])
    assert row[1] == "24.03 [21.10, 27.40]" and row[3] == "0.60 [0.40, 0.50]"


def _published(results: Path, match: dict) -> None:
    pub = results / "published"
    pub.mkdir(parents=True)
    (pub / "digits8_paper.csv").write_text(
        "# source: a paper\n# protocol: words\n"
        "dataset,image_size,method,size,patch_size,fid,inception_score,precision,recall\n"
        "digits,8,dit,debug,2,30.00,,0.50,0.60\ndigits,8,dtr,debug,2,25.00,,0.55,0.61\n")
    (pub / "digits8_paper.protocol.json").write_text(json.dumps({"summary": "the paper's protocol", "match": match}))


def test_published_numbers_sit_only_beside_records_of_their_protocol(tmp_path):
    results = tmp_path / "results"
    _published(results, {"checkpoint_step": 1500, "sample.sampler": "ddim", "num_fid_samples": 300})
    same = make_record("method=dit", fid=31.95)
    other = make_record("method=dit", "sample.num_samples=64", fid=50.0)
    page = build(results, tmp_path / "reports", same, other)
    parts = sections(page)
    first = next(k for k in parts if k.startswith("Protocol"))
    assert "FID-300" in first and "published protocol" in first        # the paper's protocol comes first
    rows = {r[0]: r for r in table_rows(parts[first])}
    assert rows["DiT-debug"][1] == "31.95 (pub 30.00, \u0394 +1.95)"
    assert rows["DTR-debug"][1] == "\u2014 (pub 25.00)"
    assert "pub" not in parts[next(k for k in parts if "FID-64" in k)]


def test_published_numbers_without_a_matching_record_have_their_own_table(tmp_path):
    results = tmp_path / "results"
    _published(results, {"checkpoint_step": 400000})
    page = build(results, tmp_path / "reports", make_record("method=dit", fid=31.95))
    parts = sections(page)
    own = next(v for k, v in parts.items() if k.startswith("Published"))
    assert "the paper's protocol" in own and {r[0]: r[1] for r in table_rows(own)}["DiT-debug"] == "\u2014 (pub 30.00)"
    measured = parts[next(k for k in parts if k.startswith("Protocol"))]
    assert "pub" not in measured


def test_refused_records_are_named_and_the_rest_is_built(tmp_path, capsys):
    results = tmp_path / "results"
    good = make_record("method=dit", fid=31.95)
    bad = make_record("method=dtr", fid=29.22)
    R.write_record(good, results)
    path = R.write_record(bad, results)
    edited = json.loads(path.read_text())
    edited["identity"]["train"]["train"]["lr"] = 0.5             # a hand edit
    path.write_text(json.dumps(edited))
    old = results / "runs" / "dit-old" / "x.json"
    old.parent.mkdir(parents=True)
    old.write_text(json.dumps({"schema": 1, "run_id": "dit-old"}))
    rpt.build_report(results, tmp_path / "reports")
    err = capsys.readouterr().err
    assert err.count("\n") == 2 and "x.json refused: record schema 1" in err and "training hash" in err
    index = (tmp_path / "reports" / "README.md").read_text()
    assert "## Records not shown" in index and "results/runs/dit-old/x.json" in index
    assert str(results) not in index
    page = (tmp_path / "reports" / "digits-8.md").read_text()
    assert "31.95" in page and "29.22" not in page


def _checkpoint_of(tmp_path: Path, step: int, *overrides: str) -> str:
    """A run folder (identity file + an empty checkpoint) so a record can name that run's step."""
    cfg = compose([f"paths.runs={tmp_path}/runs", *overrides])
    folder = tmp_path / "runs" / run_id(cfg)
    (folder / "checkpoints").mkdir(parents=True, exist_ok=True)
    (folder / IDENTITY_FILE).write_text("{}")
    path = folder / "checkpoints" / f"{step:07d}.pt"
    path.touch()
    return str(path)


def test_fid_over_steps_joins_one_run_under_one_protocol(tmp_path):
    base = [f"paths.runs={tmp_path}/runs", "method=dit"]
    run_a = [make_record(*base, f"sample.ckpt={_checkpoint_of(tmp_path, s, 'method=dit')}", fid=f)
             for s, f in ((500, 60.0), (1000, 40.0), (1500, 31.0))]
    seed1 = make_record(*base, "seed=1", f"sample.ckpt={_checkpoint_of(tmp_path, 500, 'method=dit', 'seed=1')}",
                        fid=58.0)
    fewer = make_record(*base, "sample.num_samples=16", f"sample.ckpt={_checkpoint_of(tmp_path, 1000, 'method=dit')}",
                        fid=90.0)
    families = rr._groups([*run_a, seed1, fewer], with_step=False)
    assert sorted(len(f) for f in families.values()) == [1, 4]
    family = next(f for f in families.values() if len(f) == 4)
    series = rr.fid_step_series(family)
    assert sorted(series.values()) == [[(500, 58.0)], [(500, 60.0), (1000, 40.0), (1500, 31.0)]]
    assert len({r["run_id"] for r in run_a}) == 1 and seed1["run_id"] != run_a[0]["run_id"]
    page = build(tmp_path / "results", tmp_path / "reports", *run_a, seed1, fewer)
    assert page.count("fid-vs-steps.png") == 1                          # the 16-sample record draws no line


def test_fid_at_equal_compute_uses_what_each_model_had_within_the_budget(tmp_path):
    base = [f"paths.runs={tmp_path}/runs"]
    dit = [make_record(*base, "method=dit", f"sample.ckpt={_checkpoint_of(tmp_path, s, 'method=dit')}", fid=f)
           for s, f in ((500, 60.0), (1500, 31.0))]
    switch = make_record(*base, "method=switch_dit",
                         f"sample.ckpt={_checkpoint_of(tmp_path, 1000, 'method=switch_dit')}", fid=35.0,
                         compute={"forward_flops_per_image": 12_000_000_000})
    table = rr._equal_compute([*dit, switch])
    rows = {r[0]: r[1:] for r in table_rows(table)}
    budget_dit, budget_switch = 3 * 6e9 * 64 * 1500, 3 * 12e9 * 64 * 1000
    assert budget_dit < budget_switch and f"{budget_dit / 1e15:.2f}e15" in table
    assert rows["DiT-debug"] == ["31.00 (step 1,500)", "31.00 (step 1,500)"]
    assert rows["Switch-DiT-debug"] == ["\u2014", "35.00 (step 1,000)"]


def test_the_loss_plot_keeps_auxiliary_losses_apart(tmp_path):
    results = tmp_path / "results"
    log = tmp_path / "m.jsonl"
    log.write_text("".join(json.dumps({"step": s, "loss": 1.0 / s, "aux_jsd": 0.1, "total_loss": 1.0 / s + 0.1}) + "\n"
                           for s in (10, 20)))
    rec = make_record("method=switch_dit")
    rec["artifacts"] = {"metrics_log": R.copy_artifact(log, results, rec["run_id"], "metrics.jsonl", rec["eval_id"])}
    main, aux = rr.loss_series([rec], results)
    assert main == {"Switch-DiT-debug s0": [(10, 0.1), (20, 0.05)]}
    assert aux == {"Switch-DiT-debug s0: jsd": [(10, 0.1), (20, 0.1)]}
    written = rpt.build_report(results, tmp_path / "reports") if R.write_record(rec, results) else None
    assert tmp_path / "reports" / "digits-8-loss.png" in written


def test_build_is_deterministic(tmp_path):
    results = tmp_path / "results"
    R.write_record(make_record("method=dit", fid=31.0), results)
    R.write_record(make_record("method=switch_dit", "seed=1", fid=24.0), results)
    one = rpt.build_report(results, tmp_path / "r1")
    two = rpt.build_report(results, tmp_path / "r2")
    assert [p.name for p in one] == [p.name for p in two] and any(p.suffix == ".png" for p in one)
    for a, b in zip(one, two):
        assert a.read_bytes() == b.read_bytes(), a.name


def test_published_table_renders_without_records(tmp_path):
    results = tmp_path / "results"
    (results / "published").mkdir(parents=True)
    for f in (REPO / "results" / "published").iterdir():
        (results / "published" / f.name).write_bytes(f.read_bytes())
    rpt.build_report(results, tmp_path / "reports")
    page = (tmp_path / "reports" / "imagenet-256.md").read_text()
    own = next(v for k, v in sections(page).items() if k.startswith("Published"))
    labels = [r[0] for r in table_rows(own)]
    assert labels[:4] == ["DiT-S", "DTR-S", "Switch-DiT-S", "DiT-B"] and len(labels) == 12
    assert "2403.09176" in page and "cosine" in page
