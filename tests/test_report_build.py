"""Reports: content of the tables, published comparison, plots, kernel pages, and byte-for-byte determinism."""
import json
import shutil
from pathlib import Path

import pytest

from benchmark import report as rpt
from benchmark import results as R

REPO = Path(__file__).resolve().parent.parent
PUBLISHED = REPO / "results" / "published"


def record(run_id, *, method="dit", size="B", dataset="imagenet", image_size=256, iterations=400000,
           created="2025-01-02T00:00:00Z", fid=27.10, metrics_extra=None, artifacts=None, num_samples=50000):
    metrics = {"fid": fid, "inception_score": 70.0, "precision": 0.6, "recall": 0.5, "kid": 0.0123, "sfid": 5.5,
               "fid_clean": 28.0}
    metrics.update(metrics_extra or {})
    return {
        "schema": 1, "run_id": run_id, "method": method, "size": size, "patch_size": 2, "dataset": dataset,
        "image_size": image_size, "iterations": iterations, "global_batch_size": 256, "seed": 0,
        "sampler": "ddpm", "sampling_steps": 250, "cfg_scale": 1.5, "num_samples": num_samples, "autoencoder": "sd-ema",
        "evaluation": {"feature_extractor": "torch-fidelity inception-v3-compat", "weights": "/w/pt_inception.pth",
                       "weights_sha256": "abcdef0123456789" * 4, "reference": "ADM reference batch x.npz",
                       "num_samples": num_samples},
        "metrics": metrics, "training": {"final_loss": 0.15}, "artifacts": artifacts or {},
        "wall_time_s": {"total": 10.0}, "hardware": {"device": "cuda", "name": "H100", "count": 8, "torch": "2.4"},
        "git_commit": "0123456789abcdef", "created": created,
    }


def table_rows(markdown):
    """Cells of the first markdown table's body rows."""
    rows, started = [], False
    for line in markdown.splitlines():
        if line.startswith("|"):
            if started and not line.startswith("|:") and not line.startswith("|-"):
                rows.append([c.strip() for c in line.strip("|").split("|")])
            started = True
        elif started:
            break
    return rows


@pytest.fixture
def results_dir(tmp_path):
    res = tmp_path / "results"
    shutil.copytree(PUBLISHED, res / "published")
    return res


def test_published_table_renders_without_records(results_dir, tmp_path):
    written = rpt.build_report(results_dir, tmp_path / "reports")
    names = [p.name for p in written]
    assert names == ["README.md", "imagenet-256.md"]
    page = (tmp_path / "reports" / "imagenet-256.md").read_text()
    assert "| Model " in page and "FID-50K" in page
    for label, fid in [("DiT-S", "44.28"), ("Switch-DiT-XL", "8.76"), ("DTR-L", "8.90")]:
        row = next(line for line in page.splitlines() if line.startswith(f"| {label} "))
        assert f"(pub {fid})" in row
    assert "2403.09176" in page
    # paper order: sizes S, B, L, XL; within a size DiT, DTR, Switch-DiT
    labels = [cells[0] for cells in table_rows(page)]
    assert labels[:4] == ["DiT-S", "DTR-S", "Switch-DiT-S", "DiT-B"] and len(labels) == 12


def test_measured_beside_published(results_dir, tmp_path):
    R.write_record(record("dit-b"), results_dir)
    rpt.build_report(results_dir, tmp_path / "reports")
    page = (tmp_path / "reports" / "imagenet-256.md").read_text()
    row = next(line for line in page.splitlines() if line.startswith("| DiT-B "))
    assert "27.10 (pub 27.96, \u0394 \u22120.86)" in row  # 27.10 - 27.96
    assert "70.00 (pub 64.72, \u0394 +5.28)" in row
    assert "0.60 (pub 0.57, \u0394 +0.03)" in row
    other = next(line for line in page.splitlines() if line.startswith("| DiT-S "))
    assert "\u2014 (pub 44.28)" in other
    assert "Protocol" in page and "samples: 50000" in page and "ddpm 250 steps" in page
    assert "abcdef012345" in page and "cuda H100 x8" in page and "0123456789ab" in page
    extra = page[page.index("## KID, sFID and clean-FID"):]
    assert table_rows(extra)[0][:4] == ["DiT-B", "0.0123", "5.50", "28.00"]


def test_latest_record_wins_and_history_is_plotted(results_dir, tmp_path):
    R.write_record(record("early", iterations=100000, fid=60.0), results_dir)
    R.write_record(record("late", iterations=400000, fid=30.0), results_dir)
    R.write_record(record("late-rerun-older", iterations=400000, fid=31.0, created="2025-01-01T00:00:00Z"),
                   results_dir)
    written = rpt.build_report(results_dir, tmp_path / "reports")
    page = (tmp_path / "reports" / "imagenet-256.md").read_text()
    row = next(line for line in page.splitlines() if line.startswith("| DiT-B "))
    assert row.split("|")[2].strip().startswith("30.00")
    assert (tmp_path / "reports" / "imagenet-256-fid-vs-steps.png") in written
    assert "imagenet-256-fid-vs-steps.png" in page
    assert "`early`" in page and "`late-rerun-older`" in page  # listed as earlier records


def test_unavailable_metric_and_small_dataset(results_dir, tmp_path):
    rec = record("digits-dit", dataset="digits", image_size=8, size="debug", num_samples=500,
                 metrics_extra={"inception_score": None, "inception_score_unavailable": "no classifier"})
    R.write_record(rec, results_dir)
    rpt.build_report(results_dir, tmp_path / "reports")
    page = (tmp_path / "reports" / "digits-8.md").read_text()
    row = next(line for line in page.splitlines() if line.startswith("| DiT-debug "))
    assert "FID-500" in page and "27.10" in row and "pub" not in row and "n/a" in row
    assert "inception_score unavailable \u2014 no classifier" in page
    assert "[digits 8x8](digits-8.md)" in (tmp_path / "reports" / "README.md").read_text()


def test_artifacts_linked_and_loss_plotted(results_dir, tmp_path):
    src = tmp_path / "m.jsonl"
    src.write_text("".join(json.dumps({"step": s, "loss": 1.0 / (s + 1)}) + "\n" for s in range(0, 50, 10)))
    png = tmp_path / "g.png"
    png.write_bytes(b"\x89PNG fake")
    arts = {"metrics_log": R.copy_artifact(src, results_dir, "r1", "metrics.jsonl"),
            "sample_grid": R.copy_artifact(png, results_dir, "r1", "sample_grid.png"),
            "diagnostics": {"task_expert_map": R.copy_artifact(png, results_dir, "r1", "task_expert_map.png")}}
    R.write_record(record("r1", method="switch_dit", artifacts=arts), results_dir)
    reports = tmp_path / "reports"
    written = rpt.build_report(results_dir, reports)
    page = (reports / "imagenet-256.md").read_text()
    assert "(../results/artifacts/r1/sample_grid.png)" in page
    assert "[task_expert_map](../results/artifacts/r1/task_expert_map.png)" in page
    assert reports / "imagenet-256-loss.png" in written
    assert (reports / "imagenet-256-loss.png").read_bytes()[:4] == b"\x89PNG"


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


def test_build_is_deterministic(results_dir, tmp_path):
    src = tmp_path / "m.jsonl"
    src.write_text("".join(json.dumps({"step": s, "loss": 2.0 / (s + 1)}) + "\n" for s in range(0, 100, 10)))
    arts = {"metrics_log": R.copy_artifact(src, results_dir, "a", "metrics.jsonl")}
    R.write_record(record("a", iterations=200000, fid=40.0, artifacts=arts), results_dir)
    R.write_record(record("b", iterations=400000, fid=30.0), results_dir)
    R.write_record(record("c", method="dtr", dataset="digits", image_size=8, size="debug"), results_dir)
    (results_dir / "kernels").mkdir()
    (results_dir / "kernels" / "k.json").write_text(json.dumps(kernel_json()))
    one = rpt.build_report(results_dir, tmp_path / "r1")
    two = rpt.build_report(results_dir, tmp_path / "r2")
    assert [p.name for p in one] == [p.name for p in two]
    assert any(p.suffix == ".png" for p in one)
    for a, b in zip(one, two):
        assert a.read_bytes() == b.read_bytes(), a.name


def test_cell_text_format():
    assert rpt.cell_text(27.10, 27.96, 2) == "27.10 (pub 27.96, \u0394 \u22120.86)"
    assert rpt.cell_text(None, 27.96, 2) == "n/a (pub 27.96)"
    assert rpt.cell_text(None, None, 2, has_record=False) == "\u2014"
    assert rpt.cell_text(1.0, 1.0, 2) == "1.00 (pub 1.00, \u0394 \u00b10.00)"


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


def test_speed_pages_need_no_triton(results_dir, tmp_path):
    """Writing markdown must not import Triton: the report builds with it blocked."""
    import os
    import subprocess
    import sys

    (results_dir / "kernels" / "cpu").mkdir(parents=True)
    (results_dir / "kernels" / "cpu" / "c.json").write_text(json.dumps(
        {**kernel_json(), "device_kind": "cpu", "shapes": [{"name": "s"}]}))
    (results_dir / "kernels" / "g.json").write_text(json.dumps(
        {**kernel_json(), "hardware": {"device_type": "cuda"}, "shapes": [{"name": "s", "d": 1, "seq": 1, "n": 1, "k": 1}],
         "results": [{"provider": "triton_fused", "shape": "s", "direction": "fwd+bwd", "median_ms": 1.0}]}))
    code = f"""
import sys
sys.modules["triton"] = None  # as if not installed: find_spec gives None, import raises
from benchmark import report
report.build_report({str(results_dir)!r}, {str(tmp_path / "out")!r})
assert sys.modules["triton"] is None
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    kern = (tmp_path / "out" / "kernels.md").read_text()
    assert kern.index("### g.json") < kern.index("### cpu/c.json")
    assert "2 file(s)" in (tmp_path / "out" / "README.md").read_text()
