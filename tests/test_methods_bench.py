"""The methods speed benchmark runs end to end (tiny configuration) and its ratios are what they claim."""
from __future__ import annotations

import json

import torch

from methods import bench

torch.set_num_threads(2)


def test_bench_cli_writes_record(tmp_path):
    out = tmp_path / "bench.json"
    record = bench.main(["--sizes", "debug", "--device", "cpu", "--batch", "2", "--input-size", "8", "--in-channels", "1",
                         "--num-classes", "3", "--warmup", "0", "--repeats", "1", "--out", str(out)])
    assert json.loads(out.read_text()) == record
    rows = {r["method"]: r for r in record["results"]}
    assert set(rows) == {"dit", "dtr", "switch_dit"}
    assert all(r["train_step_ms"] > 0 and r["eval_forward_ms"] > 0 for r in rows.values())
    assert rows["dtr"]["params"] == rows["dit"]["params"] < rows["switch_dit"]["params"]
    ratio = record["ratios"]["debug"]["switch_dit/dit"]
    assert abs(ratio["eval"] - rows["switch_dit"]["eval_forward_ms"] / rows["dit"]["eval_forward_ms"]) < 1e-3


def test_overhead_ratios_closed_form():
    rows = [
        {"method": "dit", "size": "S", "train_step_ms": 10.0, "eval_forward_ms": 4.0},
        {"method": "switch_dit", "size": "S", "train_step_ms": 12.0, "eval_forward_ms": 4.2},
        {"method": "dtr", "size": "B", "train_step_ms": 5.0, "eval_forward_ms": 1.0},  # no DiT row for B
    ]
    assert bench.overhead_ratios(rows) == {"S": {"switch_dit/dit": {"train": 1.2, "eval": 1.05}}}
