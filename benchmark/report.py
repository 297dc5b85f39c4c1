"""Markdown reports (+ PNG plots) built from ``results/`` alone: ``build_report(results_dir, reports_dir)``.

The output is a pure function of the results directory: everything is sorted,
no clock is read, and PNGs are written without timestamp metadata, so the same
results give byte-identical files. Written files:

* ``README.md``: index of datasets, kernel and method-speed pages, published sources,
  and any record file that was refused (unknown schema, a hash that does not match its
  protocol), one line each; the rest of the report is still built;
* ``<dataset>-<resolution>.md`` per dataset and resolution (benchmark.runs_report):
  one table per evaluation protocol, seeds aggregated, bootstrap intervals, compute,
  published numbers only beside records of the published protocol, plots;
* ``kernels.md`` from ``results/kernels/*.json`` and ``methods.md`` from
  ``results/methods/*.json`` when present.
"""
from __future__ import annotations

import json
import math
import os
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from benchmark import runs_report
from benchmark.atomic import atomic_write_text
from benchmark.results import scan_records
from kernels import bench as kernel_bench
from kernels.source import fused_kernel_sha256

# The dataset pages live in benchmark.runs_report; these names stay importable from here.
cell_text, model_label = runs_report.cell_text, runs_report.model_label
_markdown_table = runs_report.markdown_table
load_published = runs_report.load_published


# ------------------------------------------------------------------ kernels and method speed


def _load_json_dir(path: Path) -> list[tuple[str, Any]]:
    out = []
    for f in sorted(path.glob("*.json")) if path.is_dir() else []:
        try:
            out.append((f.name, json.loads(f.read_text(encoding="utf-8"))))
        except (OSError, json.JSONDecodeError) as exc:
            out.append((f.name, {"_error": f"unreadable: {type(exc).__name__}"}))
    return out


def _scalar_text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else "n/a"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_scalar_text(v)}" for k, v in sorted(value.items()))
    if isinstance(value, (list, tuple)):
        return "x".join(_scalar_text(v) for v in value)
    return "n/a" if value is None else str(value)


def _kernel_version_note(recorded: Any, current: str | None, commit: Any = None) -> str:
    """Whether a record's fused-kernel numbers belong to the kernel source in this tree."""
    if not recorded:
        return ("fused kernel source: not recorded (this record predates source hashes; "
                "its triton_fused numbers may come from an earlier kernels/moe_triton.py)")
    if current is None or recorded == current:
        return f"fused kernel source: sha256 {str(recorded)[:12]}" + (" (the current kernel)" if current else "")
    since = f" (`git log {str(commit)[:12]}.. -- kernels/moe_triton.py` lists the changes)" if commit else ""
    return (f"fused kernel source: sha256 {str(recorded)[:12]}, **not** the current kernels/moe_triton.py "
            f"({current[:12]}): the file changed after this record{since}, so its triton_fused numbers "
            "may not hold for the current one")


def _kernel_goals(data: dict) -> tuple[list, bool]:
    """(goals, recomputed): GPU records are judged again by kernels/bench.py's current rules."""
    stored = list(data.get("goals") or [])
    if (data.get("hardware") or {}).get("device_type") != "cuda" or not data.get("shapes"):
        return stored, False
    try:
        return kernel_bench.evaluate_goals(data), True
    except (KeyError, TypeError, ValueError, ZeroDivisionError):  # a record of another layout: keep its own goals
        return stored, False


def _step_lines(data: dict) -> list[str]:
    """Whole training steps (gpu_check's whole_step/step_variants, step_probe's rows and ratios)."""
    rows = [r for key in ("whole_step", "step_variants") for r in ((data.get(key) or {}).get("rows") or [])]
    if data.get("kind") == "step_probe":
        rows += list(data.get("rows") or [])
    rows = [r for r in rows if isinstance(r, dict)]
    lines: list[str] = []
    if rows:
        table = [{"Method": _scalar_text(r.get("method")), "Size": _scalar_text(r.get("size")),
                  "Batch": _scalar_text(r.get("batch")), "Mode": "compiled" if r.get("compiled") else "eager",
                  "Options": _scalar_text(r.get("options") or "-"), "Median ms": _scalar_text(r.get("median_ms")),
                  "Peak MB": _scalar_text(r.get("peak_mem_mb")),
                  "Error": str(r.get("error") or "").splitlines()[0][:90] if r.get("error") else ""} for r in rows]
        lines += ["Whole training step (forward with auxiliary losses + backward, bf16 autocast):", "",
                  _markdown_table(table, ["Method", "Size", "Batch", "Mode", "Options", "Median ms", "Peak MB",
                                          "Error"]), ""]
    ratios = [r for r in (data.get("ratios") or []) if isinstance(r, dict)]
    if ratios:
        table = [{"Batch": _scalar_text(r.get("batch")), "Mode": "compiled" if r.get("compiled") else "eager",
                  "Repeat": _scalar_text(r.get("repeat")), "DiT ms": _scalar_text(r.get("dit_ms")),
                  "Switch-DiT ms": _scalar_text(r.get("switch_dit_ms")), "Ratio": _scalar_text(r.get("ratio"))}
                 for r in ratios]
        lines += ["Switch-DiT / DiT step time:", "",
                  _markdown_table(table, ["Batch", "Mode", "Repeat", "DiT ms", "Switch-DiT ms", "Ratio"]), ""]
    return lines


def _host_lines(data: dict) -> list[str]:
    """Host time per fused fwd+bwd call against do_bench's time (gpu_check's host_overhead)."""
    rows = [r for r in ((data.get("host_overhead") or {}).get("rows") or []) if isinstance(r, dict)]
    if not rows:
        return []
    us = lambda v: "n/a" if v is None else f"{1e3 * v:.0f}"  # noqa: E731
    table = [{"Path": _scalar_text(r.get("path")), "Shape": _scalar_text(r.get("shape")),
              "Host us/call": f"{r.get('host_us_per_call', float('nan')):.0f}",
              "Wall us/call": f"{r.get('wall_us_per_call', float('nan')):.0f}",
              "do_bench us": us(r.get("do_bench_ms"))} for r in rows]
    return ["Host time per forward+backward call (the GPU idles whenever the host takes longer than the kernels):",
            "", _markdown_table(table, ["Path", "Shape", "Host us/call", "Wall us/call", "do_bench us"]), ""]


def kernels_page(entries: list[tuple[str, Any]], current_kernel: str | None = None) -> str:
    """The kernel page; ``current_kernel`` is the sha256 of the fused kernel source in this tree."""
    lines = ["# MoE kernel microbenchmarks", ""]
    columns = [("Provider", "provider"), ("Shape", "shape"), ("Direction", "direction"), ("Median ms", "median_ms"),
               ("TFLOP/s", "tflops"), ("GB/s", ("gbs", "gbps")),
               ("% spec FLOPs", ("pct_spec_tflops", "pct_peak_flops")), ("% measured FLOPs", "pct_measured_tflops"),
               ("% measured BW", "pct_measured_bw"), ("Peak MB", "peak_mem_mb")]

    def pick(r: dict, key):
        for k in (key if isinstance(key, tuple) else (key,)):
            if r.get(k) is not None:
                return r[k]
        return None

    for name, data in entries:
        lines += [f"## {name}", ""]
        if not isinstance(data, dict) or "_error" in data:
            lines += [f"Skipped: {data.get('_error', 'not a JSON object') if isinstance(data, dict) else 'not a JSON object'}", ""]
            continue
        meta = [f"hardware: {_scalar_text(data.get('hardware', {})) or 'n/a'}",
                f"dtype: {_scalar_text(data.get('dtype'))}", f"commit: {str(data.get('git_commit') or 'n/a')[:12]}"]
        lines += ["; ".join(meta), "", _kernel_version_note(data.get("fused_kernel_sha256"), current_kernel, data.get("git_commit")), ""]
        results = [r for r in data.get("results", []) if isinstance(r, dict)]
        results.sort(key=lambda r: (_scalar_text(r.get("shape")), str(r.get("direction")), str(r.get("provider"))))
        if results:
            rows = [{h: _scalar_text(pick(r, k)) for h, k in columns} for r in results]
            lines += [_markdown_table(rows, [h for h, _ in columns]), ""]
        if data.get("flops_definition"):
            lines += [f"FLOPs: {data['flops_definition']}", ""]
        goals, recomputed = _kernel_goals(data)
        goals = [g for g in goals + (data.get("step_goals") or []) if isinstance(g, dict)]
        if goals:
            grows = [{"Shape": _scalar_text(g.get("shape")), "Goal": _scalar_text(g.get("goal")),
                      "Value": _scalar_text(g.get("value")), "Target": _scalar_text(g.get("target")),
                      "Result": "pass" if g.get("passed") else "FAIL"} for g in goals]
            grows.sort(key=lambda r: (r["Shape"], r["Goal"]))
            lines += ["Goals (fused Triton kernel fwd+bwd; whole training step):", "",
                      _markdown_table(grows, ["Shape", "Goal", "Value", "Target", "Result"]), ""]
            if recomputed:
                lines += ["Kernel goals recomputed from the results with the current rules of kernels/bench.py "
                          "(dense reference: the fastest dense_linear time of the same rows over the routings).", ""]
        lines += _host_lines(data) + _step_lines(data)
        ran = data.get("providers_ran")
        if ran:
            lines += [f"Providers ran: {', '.join(sorted(map(str, ran)))}", ""]
        skipped = data.get("providers_skipped") or {}
        if isinstance(skipped, dict) and skipped:
            lines += ["Providers skipped:", "", *[f"- {k}: {v}" for k, v in sorted(skipped.items())], ""]
    return "\n".join(lines).rstrip() + "\n"


def methods_page(entries: list[tuple[str, Any]]) -> str:
    lines = ["# Method speed", ""]
    for name, data in entries:
        lines += [f"## {name}", ""]
        if isinstance(data, dict):
            meta = {k: v for k, v in data.items() if k != "results" and not isinstance(v, list)}
            if meta:
                lines += ["; ".join(f"{k}: {_scalar_text(v)}" for k, v in sorted(meta.items())), ""]
            results = data.get("results", [])
        else:
            results = data if isinstance(data, list) else []
        results = [r for r in results if isinstance(r, dict)]
        if results:
            cols = sorted({k for r in results for k in r})
            rows = sorted(({c: _scalar_text(r.get(c)) for c in cols} for r in results),
                          key=lambda row: tuple(row[c] for c in cols))
            lines += [_markdown_table(rows, cols), ""]
    return "\n".join(lines).rstrip() + "\n"


# ------------------------------------------------------------------ entry point


def _write_text(path: Path, text: str) -> Path:
    return atomic_write_text(path, text)


def build_report(results_dir: str | os.PathLike = "results", reports_dir: str | os.PathLike = "reports") -> list[Path]:
    """Rebuild every report page from ``results_dir``; returns the files written, sorted.

    A record that cannot be read is named in one line on stderr and in the index; the
    rest of the report is still built.
    """
    results_dir, reports_dir = Path(results_dir), Path(reports_dir)
    records, refused = scan_records(results_dir)
    for line in refused:
        print(f"report: {line}", file=sys.stderr)
    published = runs_report.load_published(results_dir)

    groups: dict[tuple[str, int], list[dict]] = defaultdict(list)
    for rec in records:
        groups[(rec["dataset"], int(rec["image_size"]))].append(rec)
    for table in published:
        for (dataset, image_size, *_rest) in table["rows"]:
            groups.setdefault((dataset, image_size), [])

    written: list[Path] = []
    index = ["# Benchmark reports", "", "Generated from `results/` by `python -m benchmark report`.", "",
             "## Datasets", ""]
    for (dataset, image_size) in sorted(groups):
        recs = groups[(dataset, image_size)]
        text, plots = runs_report.dataset_page(dataset, image_size, recs, published, results_dir, reports_dir)
        page = _write_text(reports_dir / f"{dataset}-{image_size}.md", text)
        written += [page, *plots]
        index.append(f"- [{dataset} {image_size}x{image_size}]({page.name}): {len(recs)} record(s)")
    index.append("")
    if refused:
        index += ["## Records not shown", "", *[f"- {_relative_line(line, results_dir)}" for line in refused], ""]

    kernels = _load_json_dir(results_dir / "kernels")
    methods = _load_json_dir(results_dir / "methods")
    extra = []
    if kernels:
        written.append(_write_text(reports_dir / "kernels.md", kernels_page(kernels, fused_kernel_sha256())))
        extra.append(f"- [MoE kernel microbenchmarks](kernels.md): {len(kernels)} file(s)")
    if methods:
        written.append(_write_text(reports_dir / "methods.md", methods_page(methods)))
        extra.append(f"- [Method speed](methods.md): {len(methods)} file(s)")
    if extra:
        index += ["## Speed", "", *extra, ""]
    if published:
        index += ["## Published reference numbers", ""]
        index += [f"- `results/published/{t['file']}`: {t['meta'].get('source', '')}" for t in published]
        index.append("")
    written.append(_write_text(reports_dir / "README.md", "\n".join(index).rstrip() + "\n"))
    return sorted(written)


def _relative_line(line: str, results_dir: Path) -> str:
    """A refusal line without the machine's absolute path to the results folder."""
    return line.replace(str(results_dir) + os.sep, "results/")
