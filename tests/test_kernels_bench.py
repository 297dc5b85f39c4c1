"""The kernel microbenchmark (kernels/bench.py): runs on CPU, writes its JSON, computes its goals as stated.

On CPU the fused kernel runs under TRITON_INTERPRET=1 (root conftest) at tiny
shapes; the record must say which providers ran, carry the fused kernel's
source hash, and its nominal FLOP rates must follow 2*N*k*L*D^2 per GEMM.
"""
import json

import pytest
import torch

from kernels import bench
from kernels.source import fused_kernel_sha256

torch.set_num_threads(2)


def test_cpu_run_writes_record(tmp_path):
    assert bench.main(["--interpret-small", "--out", str(tmp_path)]) == 0
    (path,) = tmp_path.glob("cpu-*.json")
    record = json.loads(path.read_text())
    assert record["hardware"]["device_type"] == "cpu"
    assert record["fused_kernel_sha256"] == fused_kernel_sha256()
    ran = set(record["providers"]["ran"])
    assert {"triton_fused", "official", "dense_linear", "torch"} <= ran
    assert set(record["providers"]["skipped"]) | ran == set(bench.PROVIDERS)
    rows = [r for r in record["results"] if "median_ms" in r]
    assert {r["provider"] for r in rows} == ran
    shapes = {s["name"]: s for s in record["shapes"]}
    for r in rows:
        s = shapes[r["shape"]]
        gemms = 1 if r["direction"] == "fwd" else 3
        flops = 2 * s["n"] * s["k"] * s["seq"] * s["d"] ** 2 * gemms
        assert r["tflops"] == pytest.approx(flops / (r["median_ms"] * 1e-3) / 1e12, rel=1e-9)
    assert record["goals"] == [] and record["step_goals"] == []  # GPU goals are not judged from CPU times


def _row(provider, ms, extra=None, shape="XL"):
    return {"provider": provider, "shape": shape, "direction": "fwd+bwd", "median_ms": ms, "extra_mem_mb": extra}


def test_goal_arithmetic():
    xl = {"d": 1152, "seq": 256, "n": 32, "k": 2}
    record = {"shapes": [{"name": "XL", **xl}, {"name": "XL-shared", **xl}, {"name": "XL-L64", **xl, "seq": 64}],
              "results": [_row("triton_fused", 0.5, 30.0), _row("official", 2.0, 100.0), _row("dense_linear", 0.8),
                          _row("dense_linear", 0.28, shape="XL-shared"), _row("dense_linear", 0.1, shape="XL-L64")]}
    # The dense reference is the fastest dense time of the same rows under any routing (0.28, not 0.8;
    # the L=64 shape is other rows).
    goals = {g["goal"]: g for g in bench.evaluate_goals(record, shape_names=["XL"])}
    assert goals["speedup_vs_official"]["value"] == pytest.approx(4.0) and goals["speedup_vs_official"]["passed"]
    assert goals["memory_vs_official"]["value"] == pytest.approx(0.3) and goals["memory_vs_official"]["passed"]
    assert goals["throughput_vs_dense"]["value"] == pytest.approx(0.56)
    assert goals["throughput_vs_dense"]["passed"] is False  # 0.56 < 0.6


def test_step_goal_needs_both_methods():
    whole = {"rows": [{"method": "dit", "size": "XL", "median_ms": 90.0},
                      {"method": "switch_dit", "size": "XL", "median_ms": 103.0},
                      {"method": "switch_dit", "size": "S", "median_ms": 40.0},  # no DiT-S row: no goal
                      {"method": "dit", "size": "B", "error": "OOM"}]}
    (goal,) = bench.step_goals(whole)
    assert goal["shape"] == "XL whole step" and goal["value"] == pytest.approx(103 / 90) and goal["passed"]
    whole["rows"][1]["median_ms"] = 104.0
    assert bench.step_goals(whole)[0]["passed"] is False  # 1.156 > 1.15
    # A row built with other options (the plain-torch expert path) is context, never the goal's number.
    whole["rows"].append({"method": "switch_dit", "size": "XL", "median_ms": 50.0, "options": {"moe_backend": "torch"}})
    assert bench.step_goals(whole)[0]["value"] == pytest.approx(104 / 90)
    assert bench.step_goals(None) == []


def test_whole_step_runs_each_method_and_gives_the_step_ratio():
    whole = bench.whole_step_benchmarks(torch.device("cpu"), torch.float32, sizes=("debug",),
                                        methods=("dit", "switch_dit"), batch=2, input_size=8, cpu_reps=1)
    rows = {r["method"]: r for r in whole["rows"]}
    assert set(rows) == {"dit", "switch_dit"}
    assert all(r.get("median_ms", 0) > 0 for r in rows.values()), whole
    (goal,) = bench.step_goals(whole)
    assert goal["value"] == pytest.approx(rows["switch_dit"]["median_ms"] / rows["dit"]["median_ms"])


def test_whole_step_options_reach_the_model_and_the_row():
    whole = bench.whole_step_benchmarks(torch.device("cpu"), torch.float32, sizes=("debug",), methods=("switch_dit",),
                                        batch=2, input_size=8, cpu_reps=1,
                                        options={"switch_dit": {"moe_backend": "nonsense"}})
    (row,) = whole["rows"]
    assert row["options"] == {"moe_backend": "nonsense"} and "median_ms" not in row
    assert "nonsense" in row["error"] and "moe_backend" in row["error"]


def test_step_profile_names_each_models_top_ops():
    from kernels import gpu_check

    prof = gpu_check.profile_steps(torch.device("cpu"), torch.float32, size="debug", steps=1, batch=2, input_size=8)
    assert prof["dit_steps"] == prof["switch_dit_steps"] == 1
    for method in ("dit", "switch_dit"):
        assert "Self CPU" in prof[method] and "aten::" in prof[method]
    assert "aten::mm" in prof["dit"] or "aten::addmm" in prof["dit"]


def test_host_overhead_times_each_path_and_profiles_the_fused_one():
    from kernels import gpu_check

    shape = bench.Shape("tiny", 32, 8, n=4)
    out = gpu_check.host_overhead(torch.device("cpu"), calls=2, shapes=[shape], dtype=torch.float32, profile_calls=1)
    assert [r["path"] for r in out["rows"]] == ["triton_fused", "custom_op", "dense_linear"]
    assert all(r["host_us_per_call"] > 0 and r["wall_us_per_call"] >= r["host_us_per_call"] for r in out["rows"])
    # Eager training goes through the light autograd.Function, not the custom op's dispatch layers.
    assert "_FusedMoELinearBackward" in out["profiles"][shape.name]


def test_gpu_check_summary_lists_every_goal():
    from kernels import gpu_check

    record = {"hardware": {"device": "H100"}, "results": [],
              "goals": [{"shape": "XL", "goal": "throughput_vs_dense", "value": 0.7, "target": ">= 0.6", "passed": True}],
              "step_goals": bench.step_goals({"rows": [{"method": "dit", "size": "XL", "median_ms": 90.0},
                                                       {"method": "switch_dit", "size": "XL", "median_ms": 120.0}]})}
    record["host_overhead"] = {"rows": [{"shape": "XL", "path": "triton_fused", "host_us_per_call": 210.0,
                                         "wall_us_per_call": 480.0, "do_bench_ms": 0.47}]}
    text = gpu_check._compact_table(record, [], None, [])
    assert "host     210 us" in text and "do_bench    470 us" in text
    assert "GOAL PASS throughput_vs_dense" in text
    assert "GOAL FAIL switch_dit_step_vs_dit" in text and "1.333" in text


def test_step_probe_pairs_dit_and_switch_dit_per_batch_mode_and_repeat():
    from kernels.step_probe import ratios

    rows = [{"method": "dit", "batch": 32, "median_ms": 88.0}, {"method": "switch_dit", "batch": 32, "median_ms": 132.0},
            {"method": "dit", "batch": 32, "repeat": 1, "median_ms": 90.0},
            {"method": "switch_dit", "batch": 32, "repeat": 1, "median_ms": 99.0},
            {"method": "dit", "batch": 32, "compiled": True, "median_ms": 58.0},
            {"method": "switch_dit", "batch": 32, "compiled": True, "error": "BackendCompilerFailed"},
            {"method": "dit", "batch": 64, "median_ms": 160.0}]  # no Switch-DiT at 64: no ratio
    out = ratios(rows)
    assert [(r["batch"], r["compiled"], r["repeat"]) for r in out] == [(32, False, 0), (32, False, 1)]
    assert out[0]["ratio"] == pytest.approx(1.5) and out[1]["ratio"] == pytest.approx(1.1)


def test_default_grid_is_the_issue_grid():
    shapes = bench.default_shapes()
    grid = {(s.d, s.seq, s.routing) for s in shapes}
    assert grid == {(d, seq, r) for d in (384, 768, 1024, 1152) for seq in (256, 64) for r in ("random", "shared")}
    assert len(shapes) == len(grid) and all((s.n, s.e, s.k) == (32, 3, 2) for s in shapes)


def test_h100_peaks_are_the_spec_and_measured_figures(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    peaks = bench.device_peaks(torch.device("cuda"))
    assert peaks["matched"] == "H100"
    assert (peaks["spec_tflops"]["bfloat16"], peaks["spec_gbs"]) == (989, 3350)
    assert (peaks["measured_tflops"]["bfloat16"], peaks["measured_gbs"]) == (800, 3000)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 PCIe")
    assert bench.device_peaks(torch.device("cuda"))["matched"] == "H100 PCIe"  # not the SXM figures


def test_gpu_check_moe_mask_correctness_rows_and_summary():
    """The GPU script's moe_mask check, run on CPU (interpreted kernels, float32 experts) at a tiny shape."""
    import time

    from kernels import gpu_check

    shapes = [bench.Shape("tiny", 16, 8, n=3, routing=r) for r in ("random", "shared")]
    rows = gpu_check.check_mask_correctness(torch.device("cpu"), time.monotonic() + 600, torch.float32, shapes=shapes)
    assert [r["tensor"] for r in rows] == list(gpu_check.TENSORS) * 2
    assert all(r["passed"] and r["rel_err"] < 1e-5 and r["op"] == "moe_mask" for r in rows), rows
    text = gpu_check._compact_table({"hardware": {}}, rows, None, [])
    assert "CORRECTNESS PASS moe_mask float32 10 checks, 0 errors" in text
    late = gpu_check.check_mask_correctness(torch.device("cpu"), time.monotonic() - 1, torch.float32, shapes=shapes)
    assert all(r["error"] == "skipped: time budget" for r in late) and len(late) == 2
