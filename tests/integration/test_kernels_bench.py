"""The speed tools of benchmark/speed: kernel microbenchmark on a CPU, timer, records, goals, GPU scripts' parts.

On CPU the fused kernel runs under TRITON_INTERPRET=1 (root conftest, and the kernels verb
sets it itself) at the --quick CPU shapes; the record must hold every provider row once with
its spread and its error against float64, and nominal rates must follow the closed forms
2*N*k*L*D^2 FLOPs per GEMM and one read or write of every tensor.
"""
import datetime
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from benchmark.speed import goals, kernel_bench, records, steps
from benchmark.speed.records import fused_kernel_sha256
from benchmark.speed.shapes import Shape, default_shapes, grid
from benchmark.speed.timing import measure, summarize

torch.set_num_threads(2)
ROOT = Path(__file__).resolve().parents[2]


def test_cpu_quick_run_has_every_provider_row_once_with_spread_and_error(tmp_path, capsys):
    assert kernel_bench.main(["--quick", "--repeats", "3", "--out", str(tmp_path)]) == 0
    (path,) = tmp_path.glob("cpu-*.json")
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    assert re.fullmatch(rf"cpu-\d{{8}}-{commit[:7] or 'nocommit'}-quick\.json", path.name)
    record = json.loads(path.read_text())
    assert record["device_kind"] == "cpu" and record["hardware"]["device"] == "cpu"
    assert record["fused_kernel_sha256"] == fused_kernel_sha256() and record["triton_interpreter"]
    ran = set(record["providers"]["ran"])
    assert {"triton_fused", "official", "dense_linear", "torch"} <= ran
    assert set(record["providers"]["skipped"]) | ran == set(kernel_bench.PROVIDERS)
    shapes = {s["name"]: s for s in record["shapes"]}
    assert set(shapes) == {s.name for s in default_shapes("cpu", quick=True)}
    keys = [(r["provider"], r["shape"], r["direction"]) for r in record["results"]]
    assert len(keys) == len(set(keys)) == len(ran) * len(shapes) * 2
    itemsize = 4  # float32
    for r in record["results"]:
        assert "error" not in r, r
        s = shapes[r["shape"]]
        assert math.isfinite(r["max_err"]) and r["max_err"] < 1e-4, r
        assert r["repeats"] == 3 and r["q1_ms"] <= r["median_ms"] <= r["q3_ms"]
        assert r["iqr_ms"] == pytest.approx(r["q3_ms"] - r["q1_ms"]) and r["iqr_ms"] >= 0
        seconds = r["median_ms"] * 1e-3
        gemms = 1 if r["direction"] == "fwd" else 3
        assert r["tflops"] == pytest.approx(2 * s["n"] * s["k"] * s["seq"] * s["d"] ** 2 * gemms / seconds / 1e12)
        rows = s["n"] * s["k"] * s["seq"] if r["provider"] == "dense_linear" else s["n"] * s["seq"]
        weights = (1 if r["provider"] == "dense_linear" else s["e"]) * (s["d"] ** 2 + s["d"])
        acts, wts = (2, 1) if r["direction"] == "fwd" else (5, 3)  # + dy, x, dx and W, dW
        assert r["gbs"] == pytest.approx((acts * rows * s["d"] + wts * weights) * itemsize / seconds / 1e9)
        assert r["gbs"] > 0
    assert record["goals"] == [] and record["step_goals"] == []  # GPU goals are not judged from CPU times
    out = capsys.readouterr().out
    for provider, shape, direction in keys:  # every row printed once
        pattern = rf"^{re.escape(provider)}\s+{re.escape(shape)}\s+{re.escape(direction)}\s"
        assert len(re.findall(pattern, out, flags=re.M)) == 1, (provider, shape, direction)
    assert "say nothing about GPU speed" in out


def test_kernels_verb_help_lists_every_flag():
    proc = subprocess.run([sys.executable, "-m", "benchmark", "kernels", "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    flags = [opt for action in kernel_bench.parser()._actions for opt in action.option_strings]
    assert "--quick" in flags and "--repeats" in flags
    for flag in flags:
        assert flag in proc.stdout, flag


def test_error_is_the_largest_relative_deviation_over_tensors():
    got = [torch.tensor([1.0, 2.0]), torch.tensor([0.0, 0.0])]
    want = [torch.tensor([1.0, 4.0], dtype=torch.float64), torch.tensor([0.0, 0.5], dtype=torch.float64)]
    assert kernel_bench.max_error(got, want) == pytest.approx(max(2 / 4, 0.5 / 0.5))
    assert kernel_bench.max_error([torch.zeros(2)], [torch.zeros(2, dtype=torch.float64)]) == 0.0


def test_reference_of_dense_rows_is_addmm_in_float64():
    inp = kernel_bench.make_inputs(Shape("t", 8, 4, n=2), "cpu", torch.float32)
    out, drows, dweight, dbias = kernel_bench.reference(inp, dense=True)
    rows = inp["x"].double().reshape(-1, 8).repeat(2, 1)
    dy = inp["dy"].double().reshape(-1, 8).repeat(2, 1)
    w, b = inp["w"][0].double(), inp["b"][0].double()
    torch.testing.assert_close(out, rows @ w + b)
    torch.testing.assert_close(drows, dy @ w.T)
    torch.testing.assert_close(dweight, rows.T @ dy)
    torch.testing.assert_close(dbias, dy.sum(0))


def test_timer_summary_closed_form_and_call_count():
    t = summarize([5.0, 1.0, 4.0, 2.0, 3.0])
    assert (t.median_ms, t.q1_ms, t.q3_ms, t.iqr_ms, t.repeats) == (3.0, 2.0, 4.0, 2.0, 5)
    one = summarize([7.0])
    assert (one.median_ms, one.iqr_ms, one.repeats) == (7.0, 0.0, 1)
    with pytest.raises(ValueError, match="repeats must be >= 1"):
        summarize([])
    leaf = torch.ones(3, requires_grad=True)
    seen = []

    def fn():
        seen.append(leaf.grad)  # grads are dropped before every call
        (leaf * 2).sum().backward()

    timing = measure(fn, "cpu", warmup=2, repeats=4, clear=[leaf])
    assert len(seen) == 6 and all(g is None for g in seen) and timing.repeats == 4 and leaf.grad is None
    with pytest.raises(ValueError, match="repeats=0"):
        measure(fn, "cpu", repeats=0)


def test_record_names_device_day_commit_and_what(tmp_path):
    day = datetime.date(2026, 1, 2)
    assert records.record_name("cpu", "quick", commit="abcdef0123", day=day) == "cpu-20260102-abcdef0-quick.json"
    assert records.record_name("cpu", commit=None, day=day) == "cpu-20260102-nocommit.json"
    rec = records.new_record("kernel_benchmark", "cpu", results=[1])
    assert rec["kind"] == "kernel_benchmark" and rec["device_kind"] == "cpu" and rec["results"] == [1]
    assert {"git_commit", "git", "hardware", "versions", "created", "fused_kernel_sha256"} <= set(rec)
    path = records.write_record(rec, tmp_path, "cpu", "x")
    assert json.loads(path.read_text()) == rec and path.name.endswith("-x.json") and path.name.startswith("cpu-")


def _row(provider, ms, extra=None, shape="XL"):
    return {"provider": provider, "shape": shape, "direction": "fwd+bwd", "median_ms": ms, "extra_mem_mb": extra}


def test_goal_arithmetic():
    xl = {"d": 1152, "seq": 256, "n": 32, "k": 2}
    record = {"shapes": [{"name": "XL", **xl}, {"name": "XL-shared", **xl}, {"name": "XL-L64", **xl, "seq": 64}],
              "results": [_row("triton_fused", 0.5, 30.0), _row("official", 2.0, 100.0), _row("dense_linear", 0.8),
                          _row("dense_linear", 0.28, shape="XL-shared"), _row("dense_linear", 0.1, shape="XL-L64")]}
    # The dense reference is the fastest dense time of the same rows under any routing (0.28, not 0.8;
    # the L=64 shape is other rows).
    result = {g["goal"]: g for g in goals.evaluate_goals(record, shape_names=["XL"])}
    assert result["speedup_vs_official"]["value"] == pytest.approx(4.0) and result["speedup_vs_official"]["passed"]
    assert result["memory_vs_official"]["value"] == pytest.approx(0.3) and result["memory_vs_official"]["passed"]
    assert result["throughput_vs_dense"]["value"] == pytest.approx(0.56)
    assert result["throughput_vs_dense"]["passed"] is False  # 0.56 < 0.6


def test_goals_are_data_read_from_conf():
    data = json.loads((ROOT / "conf" / "speed" / "goals.json").read_text())
    assert data["kernel_goals"]["speedup_vs_official"] == {**data["kernel_goals"]["speedup_vs_official"],
                                                            "target": 1.5, "op": ">="}
    # A changed target changes the verdict: the rules come from the data, not the code.
    looser = {**data["kernel_goals"], "throughput_vs_dense": {"target": 0.5, "op": ">="}}
    record = {"shapes": [{"name": "XL", "d": 1, "seq": 1, "n": 1, "k": 1}],
              "results": [_row("triton_fused", 1.0), _row("dense_linear", 0.56)]}
    assert goals.evaluate_goals(record)[0]["passed"] is False
    assert goals.evaluate_goals(record, goals=looser)[0]["passed"] is True


def test_step_goal_needs_both_methods():
    whole = {"rows": [{"method": "dit", "size": "XL", "median_ms": 90.0},
                      {"method": "switch_dit", "size": "XL", "median_ms": 103.0},
                      {"method": "switch_dit", "size": "S", "median_ms": 40.0},  # no DiT-S row: no goal
                      {"method": "dit", "size": "B", "error": "OOM"}]}
    (goal,) = goals.step_goals(whole)
    assert goal["shape"] == "XL whole step" and goal["value"] == pytest.approx(103 / 90) and goal["passed"]
    whole["rows"][1]["median_ms"] = 104.0
    assert goals.step_goals(whole)[0]["passed"] is False  # 1.156 > 1.15
    # A row built with other options (the plain-torch expert path) is context, never the goal's number.
    whole["rows"].append({"method": "switch_dit", "size": "XL", "median_ms": 50.0, "options": {"moe_backend": "torch"}})
    assert goals.step_goals(whole)[0]["value"] == pytest.approx(104 / 90)
    assert goals.step_goals(None) == []


def test_whole_step_runs_each_method_and_gives_the_step_ratio():
    whole = steps.whole_step_benchmarks(torch.device("cpu"), torch.float32, sizes=("debug",),
                                        methods=("dit", "switch_dit"), batch=2, input_size=8, repeats=2)
    rows = {r["method"]: r for r in whole["rows"]}
    assert set(rows) == {"dit", "switch_dit"}
    assert all(r.get("median_ms", 0) > 0 and r["iqr_ms"] >= 0 and r["repeats"] == 2 for r in rows.values()), whole
    (goal,) = goals.step_goals(whole)
    assert goal["value"] == pytest.approx(rows["switch_dit"]["median_ms"] / rows["dit"]["median_ms"])


def test_whole_step_options_reach_the_model_and_the_row():
    whole = steps.whole_step_benchmarks(torch.device("cpu"), torch.float32, sizes=("debug",), methods=("switch_dit",),
                                        batch=2, input_size=8, repeats=1,
                                        options={"switch_dit": {"moe_backend": "nonsense"}})
    (row,) = whole["rows"]
    assert row["options"] == {"moe_backend": "nonsense"} and "median_ms" not in row
    assert "nonsense" in row["error"] and "moe_backend" in row["error"]


def test_step_profile_names_each_models_top_ops():
    from benchmark.speed import gpu_check

    prof = gpu_check.profile_steps(torch.device("cpu"), torch.float32, size="debug", steps=1, batch=2, input_size=8)
    assert prof["dit_steps"] == prof["switch_dit_steps"] == 1
    for method in ("dit", "switch_dit"):
        assert "Self CPU" in prof[method] and "aten::" in prof[method]
    assert "aten::mm" in prof["dit"] or "aten::addmm" in prof["dit"]


def test_host_overhead_times_each_path_and_profiles_the_fused_one():
    from benchmark.speed import gpu_check

    shape = Shape("tiny", 32, 8, n=4)
    out = gpu_check.host_overhead(torch.device("cpu"), calls=2, shapes=[shape], dtype=torch.float32, profile_calls=1)
    assert [r["path"] for r in out["rows"]] == ["triton_fused", "custom_op", "dense_linear"]
    assert all(r["host_us_per_call"] > 0 and r["wall_us_per_call"] >= r["host_us_per_call"] for r in out["rows"])
    # Eager training goes through the light autograd.Function, not the custom op's dispatch layers.
    assert "_FusedMoELinearBackward" in out["profiles"][shape.name]


def test_gpu_check_summary_lists_every_goal():
    from benchmark.speed import gpu_check

    record = {"hardware": {"name": "H100"}, "results": [],
              "goals": [{"shape": "XL", "goal": "throughput_vs_dense", "value": 0.7, "target": ">= 0.6", "passed": True}],
              "step_goals": goals.step_goals({"rows": [{"method": "dit", "size": "XL", "median_ms": 90.0},
                                                       {"method": "switch_dit", "size": "XL", "median_ms": 120.0}]})}
    record["host_overhead"] = {"rows": [{"shape": "XL", "path": "triton_fused", "host_us_per_call": 210.0,
                                         "wall_us_per_call": 480.0, "timed_ms": 0.47}]}
    text = gpu_check._compact_table(record, [], None, [])
    assert "host     210 us" in text and "timed    470 us" in text and "device: H100" in text
    assert "GOAL PASS throughput_vs_dense" in text
    assert "GOAL FAIL switch_dit_step_vs_dit" in text and "1.333" in text


def test_step_probe_pairs_dit_and_switch_dit_per_batch_mode_and_repeat():
    from benchmark.speed.step_probe import ratios

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
    shapes = default_shapes("cuda")
    assert shapes == grid()
    got = {(s.d, s.seq, s.routing) for s in shapes}
    assert got == {(d, seq, r) for d in (384, 768, 1024, 1152) for seq in (256, 64) for r in ("random", "shared")}
    assert len(shapes) == len(got) and all((s.n, s.e, s.k) == (32, 3, 2) for s in shapes)
    with pytest.raises(ValueError, match="unknown sizes \\['XXL'\\]; valid"):
        grid(("XXL",))


def test_h100_peaks_are_the_spec_and_measured_figures():
    peaks = goals.device_peaks("NVIDIA H100 80GB HBM3")
    assert peaks["matched"] == "H100"
    assert (peaks["spec_tflops"]["bfloat16"], peaks["spec_gbs"]) == (989, 3350)
    assert (peaks["measured_tflops"]["bfloat16"], peaks["measured_gbs"]) == (800, 3000)
    assert goals.device_peaks("NVIDIA H100 PCIe")["matched"] == "H100 PCIe"  # not the SXM figures
    assert goals.device_peaks("NVIDIA A100-SXM4-80GB") is None


def test_gpu_check_moe_mask_correctness_rows_and_summary():
    """The GPU script's moe_mask check, run on CPU (interpreted kernels, float32 experts) at a tiny shape."""
    from benchmark.speed import gpu_check

    shapes = [Shape("tiny", 16, 8, n=3, routing=r) for r in ("random", "shared")]
    rows = gpu_check.check_mask_correctness(torch.device("cpu"), time.monotonic() + 600, torch.float32, shapes=shapes)
    assert [r["tensor"] for r in rows] == list(gpu_check.TENSORS) * 2
    assert all(r["passed"] and r["rel_err"] < 1e-5 and r["op"] == "moe_mask" for r in rows), rows
    text = gpu_check._compact_table({"hardware": {}}, rows, None, [])
    assert "CORRECTNESS PASS moe_mask float32 10 checks, 0 errors" in text
    late = gpu_check.check_mask_correctness(torch.device("cpu"), time.monotonic() - 1, torch.float32, shapes=shapes)
    assert all(r["error"] == "skipped: time budget" for r in late) and len(late) == 2


BLOCKED = ("hydra", "omegaconf", "submitit", "torch_fidelity", "pandas", "diffusers")
# Absent as on that machine: `import x` raises ImportError and importlib.util.find_spec("x") (how torch
# probes optional packages) answers None; a None entry in sys.modules does both.
BLOCKER = f"""
import runpy, sys
BLOCKED = {BLOCKED!r}
for name in BLOCKED:
    sys.modules[name] = None
"""


@pytest.mark.parametrize("module", ["benchmark.speed.gpu_check", "benchmark.speed.step_probe"])
def test_gpu_scripts_need_only_torch_and_triton(module):
    code = BLOCKER + f"""
sys.argv = ["{module}", "--help"]
try:
    runpy.run_module("{module}", run_name="__main__")
except SystemExit as exc:
    assert exc.code == 0, exc.code
loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED and sys.modules[m] is not None)
assert not loaded, loaded
print("IMPORTS OK")
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0 and "IMPORTS OK" in proc.stdout, proc.stderr[-3000:]
    assert "--budget-s" in proc.stdout


def test_blocker_blocks():
    """The check above can fail: a module that imports a blocked package is refused."""
    code = BLOCKER + "\nimport benchmark.config\n"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode != 0 and "ModuleNotFoundError" in proc.stderr and "halted; None in sys.modules" in proc.stderr
