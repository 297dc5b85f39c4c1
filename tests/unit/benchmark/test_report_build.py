"""Reports: the kernel and method-speed pages (the dataset pages are tested in test_report_runs.py)."""

import json
from pathlib import Path
from speed_cases import kernel_json, results_dir  # noqa: F401  (results_dir is a fixture)
from benchmark import report as rpt
from md_tables import table_rows

REPO = Path(__file__).resolve().parents[3]
PUBLISHED = REPO / "results" / "published"


def test_kernels_and_methods_pages(results_dir, tmp_path):
    (results_dir / "kernels").mkdir()
    (results_dir / "kernels" / "moe_h100.json").write_text(json.dumps(kernel_json()))
    (results_dir / "kernels" / "broken.json").write_text("{")
    (results_dir / "methods").mkdir()
    (results_dir / "methods" / "speed.json").write_text(json.dumps(
        {"device": "cpu", "results": [{"method": "dit", "size": "S", "train_step_ms": 3.5}]}))
    rpt.build_report(results_dir, tmp_path / "reports")
    kern = (tmp_path / "reports" / "kernels.md").read_text()
    assert "| triton" in kern and "250.5" in kern and "scattermoe: not installed" in kern
    assert "D=1152, L=256, N=8" in kern and "n/a" in kern and "unreadable" in kern
    meth = (tmp_path / "reports" / "methods.md").read_text()
    row = next(line for line in meth.splitlines() if line.startswith("| DiT-S "))
    assert "| 3.50 " in row and "| 1.000 " in row  # its own DiT ratio
    index = (tmp_path / "reports" / "README.md").read_text()
    assert "kernels.md" in index and "methods.md" in index


def test_kernel_page_says_which_kernel_version_was_measured():
    from benchmark.speed.records import fused_kernel_sha256

    current = fused_kernel_sha256()
    assert current is not None and len(current) == 64
    page = rpt.kernels_page([("now.json", {**kernel_json(), "fused_kernel_sha256": current}),
                             ("old.json", {**kernel_json(), "fused_kernel_sha256": "0" * 64}),
                             ("legacy.json", kernel_json())], current)
    now, old, legacy = (page.split(f"## {n}")[1].split("##")[0] for n in ("now.json", "old.json", "legacy.json"))
    assert f"sha256 {current[:12]} (the current kernel)" in now
    assert "**not** the current" in old and "000000000000" in old and current[:12] in old
    assert "not recorded" in legacy


def test_gpu_kernel_goals_are_recomputed_from_results():
    shape = {"d": 1152, "seq": 256, "n": 32, "k": 2}
    rows = [{"provider": p, "shape": name, "direction": "fwd+bwd", "median_ms": ms}
            for p, name, ms in [("triton_fused", "XL-random", 1.25), ("dense_linear", "XL-random", 0.86),
                                ("triton_fused", "XL-shared", 1.27), ("dense_linear", "XL-shared", 0.28)]]
    stale = [{"shape": "XL-random", "goal": "throughput_vs_dense", "value": 0.69, "target": ">= 0.6", "passed": True}]
    data = {"hardware": {"device_type": "cuda"}, "shapes": [{"name": "XL-random", **shape}, {"name": "XL-shared", **shape}],
            "results": rows, "goals": stale}
    page = rpt.kernels_page([("h100.json", data)])
    line = next(x for x in page.splitlines() if x.startswith("| XL-random") and "throughput_vs_dense" in x)
    assert "0.224" in line and "FAIL" in line  # 0.28 / 1.25 with the fastest dense time of the same rows
    assert "recomputed" in page
    cpu = {**data, "hardware": {"device_type": "cpu"}}
    assert "0.69" in rpt.kernels_page([("cpu.json", cpu)])  # CPU records keep what they stored


def test_kernel_page_shows_steps_host_time_and_probe_ratios():
    gpu = {"whole_step": {"rows": [{"method": "dit", "size": "XL", "batch": 32, "median_ms": 88.2, "peak_mem_mb": 16288.4},
                                   {"method": "switch_dit", "size": "XL", "batch": 32, "median_ms": 135.4}]},
           "step_variants": {"rows": [{"method": "switch_dit", "size": "XL", "batch": 32,
                                       "options": {"moe_backend": "torch"}, "median_ms": 166.5}]},
           "host_overhead": {"rows": [{"path": "triton_fused", "shape": "XL-random", "host_us_per_call": 781.3,
                                       "wall_us_per_call": 783.2, "do_bench_ms": 0.8971}]}}
    probe = {"kind": "step_probe", "rows": [{"method": "switch_dit", "size": "XL", "batch": 32, "compiled": True,
                                             "error": "BackendCompilerFailed: boom\nmore"}],
             "ratios": [{"batch": 64, "compiled": False, "repeat": 0, "dit_ms": 160.7, "switch_dit_ms": 225.1,
                         "ratio": 225.1 / 160.7}]}
    page = rpt.kernels_page([("gpu.json", gpu), ("probe.json", probe)])
    gpu_part, probe_part = page.split("## probe.json")
    rows = [x for x in gpu_part.splitlines() if x.startswith("| switch_dit")]
    assert any("eager" in x and "135.4" in x for x in rows)
    assert any("moe_backend=torch" in x and "166.5" in x for x in rows)
    host = next(x for x in gpu_part.splitlines() if x.startswith("| triton_fused"))
    assert "| 781 " in host and "| 897 " in host  # us: host time against do_bench's 0.8971 ms
    assert "compiled" in probe_part and "BackendCompilerFailed: boom" in probe_part and "more" not in probe_part
    ratio = next(x for x in probe_part.splitlines() if x.startswith("| 64"))
    assert "1.401" in ratio


def speed_record(kind, name, created, *, results=None, commit="feedbeefcafe0123", **extra):
    hardware = {"device": "cuda" if kind == "gpu" else "cpu", "name": name}
    return {"kind": "method_speed", "device_kind": kind, "hardware": hardware, "created": created,
            "git": {"commit": commit, "dirty": False}, "git_commit": commit,
            "versions": {"torch": "2.14.1"}, "results": results or [], **extra}


def test_kernel_page_orders_gpu_before_cpu_and_never_calls_cpu_the_current_kernel():
    current = "c" * 64
    cpu = {**speed_record("cpu", "x86_64", "2026-03-01T00:00:00+00:00"), "kind": "kernel_benchmark",
           "fused_kernel_sha256": current, "results": [{"provider": "triton_fused", "shape": "mini", "direction": "fwd",
                                                        "median_ms": 250.0, "iqr_ms": 3.0, "max_err": 2e-7}]}
    gpu = {**speed_record("gpu", "NVIDIA H100 80GB HBM3", "2026-01-01T00:00:00+00:00"), "kind": "kernel_benchmark",
           "fused_kernel_sha256": current, "results": [{"provider": "triton_fused", "shape": "XL", "direction": "fwd",
                                                        "median_ms": 0.09}]}
    page = rpt.kernels_page([("cpu/cpu-20260301-feedbee-quick.json", cpu), ("h100-20260101.json", gpu)], current)
    assert page.index("## NVIDIA H100 80GB HBM3") < page.index("### h100-20260101.json") < page.index("## CPU x86_64")
    gpu_part, cpu_part = page.split("## CPU x86_64")
    assert "(the current kernel)" in gpu_part and "the current kernel" not in cpu_part
    assert "say nothing about GPU speed" in cpu_part and "Triton interpreter" in cpu_part
    row = next(x for x in cpu_part.splitlines() if x.startswith("| triton_fused"))
    assert "| 250 " in row and "| 3 " in row and "2e-07" in row  # median, IQR and max error columns


def test_methods_page_one_table_per_device_newest_first_history_collapsed():
    def rows(train):  # (method, size, train ms); eval is half the train time
        return [{"method": m, "size": s, "train_step_ms": t, "eval_forward_ms": t / 2, "params": 33e6} for m, s, t in train]

    config = {"batch": 32, "dtype": "bf16", "compile": False, "warmup": 5, "repeats": 10, "input_size": 32,
              "patch_size": 2, "sizes": ["S", "XL"], "methods": ["dit", "dtr", "switch_dit"],
              "official_repo": "/tmp/somewhere/Switch-DiT", "options": {}}
    new = speed_record("gpu", "NVIDIA H100 80GB HBM3", "2026-02-01T10:00:00+00:00", config=config, results=rows(
        [("switch_dit", "XL", 150.0), ("dit", "S", 20.0), ("dit", "XL", 100.0), ("dtr", "XL", 110.0),
         ("switch_dit", "S", 40.0), ("dtr", "S", 21.0)]))
    old = speed_record("gpu", "NVIDIA H100 80GB HBM3", "2026-01-01T10:00:00+00:00", config=config,
                       results=rows([("dit", "S", 30.0), ("switch_dit", "S", 90.0)]), commit=None)
    old.pop("git")
    cpu = speed_record("cpu", "x86_64", "2026-03-01T10:00:00+00:00", config={**config, "dtype": "fp32", "batch": 4},
                       results=rows([("dit", "S", 1400.0), ("dtr", "S", 1500.0)]))
    page = rpt.methods_page([("a-cpu.json", cpu), ("b-old.json", old), ("c-new.json", new)])
    h100, cpu_part = page.split("## CPU x86_64")
    current, history = h100.split("### History")
    assert "c-new.json" in current and "2026-02-01" in current and "b-old.json" not in current
    assert "<details>" in history and "b-old.json" in history and "commit not recorded" in history
    table = table_rows(current[current.index("| Model"):])
    assert [r[0] for r in table] == ["DiT-S", "DTR-S", "Switch-DiT-S", "DiT-XL", "DTR-XL", "Switch-DiT-XL"]
    header = next(x for x in current.splitlines() if x.startswith("| Model"))
    cols = [c.strip() for c in header.strip("|").split("|")]
    ratio = {r[0]: (r[cols.index("Train / DiT")], r[cols.index("Eval / DiT")]) for r in table}
    assert ratio["Switch-DiT-XL"] == ("1.500", "1.500") and ratio["DTR-S"] == ("1.050", "1.050")
    assert ratio["DiT-S"] == ("1.000", "1.000")
    assert "Protocol: batch 32; bf16 autocast; eager" in current and "commit feedbeefcafe" in current
    assert "batch 4; fp32 (no autocast)" in cpu_part
    # No raw configuration dumps, machine paths or "x"-joined lists.
    for dump in ("ditxdtr", "SxXL", "config", "batch=", "/tmp/", "official_repo"):
        assert dump not in page, dump
