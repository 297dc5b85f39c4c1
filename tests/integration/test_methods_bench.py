"""The method-speed benchmark (benchmark/speed/method_bench.py) runs end to end (tiny configuration),
writes its record under the standard name, and its ratios are what they claim."""
from __future__ import annotations

import json
import re
import sys

import torch

from benchmark.speed import method_bench as bench

torch.set_num_threads(2)


def test_bench_cli_writes_record(tmp_path):
    record = bench.main(["--sizes", "debug", "--device", "cpu", "--batch", "2", "--input-size", "8", "--in-channels", "1",
                         "--num-classes", "3", "--warmup", "0", "--repeats", "2", "--out", str(tmp_path)])
    (out,) = tmp_path.glob("*.json")
    assert re.fullmatch(r"cpu-\d{8}-([0-9a-f]{7}|nocommit)-fp32\.json", out.name), out.name
    assert json.loads(out.read_text()) == record
    assert record["kind"] == "method_speed" and record["device_kind"] == "cpu" and record["hardware"]["device"] == "cpu"
    rows = {r["method"]: r for r in record["results"]}
    assert set(rows) == {"dit", "dtr", "switch_dit"}
    assert all(r["train_step_ms"] > 0 and r["eval_forward_ms"] > 0 for r in rows.values())
    assert all(r["train_step_iqr_ms"] >= 0 and r["eval_forward_iqr_ms"] >= 0 and r["repeats"] == 2
               for r in rows.values())
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


STAND_IN_DIT = '''
import torch, torch.nn as nn

class Tiny(nn.Module):
    def __init__(self, input_size, num_classes):
        super().__init__()
        self.conv = nn.Conv2d(4, 8, 1)
    def forward(self, x, t, y):
        return self.conv(x)

DiT_models = {"DiT-S/2": Tiny}
'''


def test_official_dit_checkout_is_timed(tmp_path, monkeypatch):
    # A stand-in with the official DiT repo's layout (models.py exporting DiT_models) exercises
    # detection, building and the official/ours ratio; the real checkout is used the same way.
    repo = tmp_path / "dit_checkout"
    repo.mkdir()
    (repo / "models.py").write_text(STAND_IN_DIT)
    monkeypatch.setattr(sys, "path", list(sys.path))  # the bench prepends the checkout
    monkeypatch.delitem(sys.modules, "models", raising=False)
    try:
        record = bench.main(["--sizes", "S", "--methods", "dit", "--device", "cpu", "--batch", "2", "--input-size", "8",
                             "--warmup", "0", "--repeats", "1", "--official-repo", str(repo), "--out", ""])
    finally:
        sys.modules.pop("models", None)  # the stand-in must not leak into other tests
    (row,) = record["official"]
    assert row["method"] == "official_dit" and row["train_step_ms"] > 0 and row["eval_forward_ms"] > 0
    ours = record["results"][0]
    ratio = record["official_ratios"]["S"]["official_dit/dit"]
    assert abs(ratio["train"] - row["train_step_ms"] / ours["train_step_ms"]) < 1e-3


def test_official_repo_that_is_no_checkout_is_reported(tmp_path):
    rows = bench.bench_official(tmp_path, ["S"], bench.parse_args(["--device", "cpu"]), torch.device("cpu"))
    assert rows == [{"method": "official", "error": rows[0]["error"]}]
    assert "models.py" in rows[0]["error"] and str(tmp_path) in rows[0]["error"]
