"""Reports: the kernel and method-speed pages (the dataset pages are tested in test_report_runs.py)."""
import json
import shutil
from pathlib import Path

import pytest

from benchmark import report as rpt

REPO = Path(__file__).resolve().parent.parent
PUBLISHED = REPO / "results" / "published"


@pytest.fixture
def results_dir(tmp_path):
    res = tmp_path / "results"
    shutil.copytree(PUBLISHED, res / "published")
    return res


def kernel_json():
    return {"hardware": {"name": "H100", "peak_tflops": 989}, "git_commit": "feedbeef", "dtype": "bfloat16",
            "results": [{"provider": "triton", "shape": {"N": 8, "L": 256, "D": 1152}, "direction": "fwd",
                         "median_ms": 0.123, "tflops": 250.5, "gbps": 900.0, "pct_peak_flops": 25.3,
                         "peak_mem_mb": 12.0},
                        {"provider": "torch", "shape": {"N": 8, "L": 256, "D": 1152}, "direction": "fwd",
                         "median_ms": 0.5}],  # missing fields must not break the page
            "providers_ran": ["triton", "torch"], "providers_skipped": {"scattermoe": "not installed"}}


def test_kernels_and_methods_pages(results_dir, tmp_path):
    (results_dir / "kernels").mkdir()
    (results_dir / "kernels" / "moe_h100.json").write_text(json.dumps(kernel_json()))
    (results_dir / "kernels" / "broken.json").write_text("{")
    (results_dir / "methods").mkdir()
    (results_dir / "methods" / "speed.json").write_text(json.dumps(
        {"device": "cpu", "results": [{"method": "dit", "size": "S", "it_per_s": 3.5}]}))
    rpt.build_report(results_dir, tmp_path / "reports")
    kern = (tmp_path / "reports" / "kernels.md").read_text()
    assert "| triton" in kern and "250.5" in kern and "scattermoe: not installed" in kern
    assert "D=1152, L=256, N=8" in kern and "n/a" in kern and "unreadable" in kern
    meth = (tmp_path / "reports" / "methods.md").read_text()
    assert "3.5" in meth and "dit" in meth
    index = (tmp_path / "reports" / "README.md").read_text()
    assert "kernels.md" in index and "methods.md" in index


def test_kernel_page_says_which_kernel_version_was_measured():
    from kernels.source import fused_kernel_sha256

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
