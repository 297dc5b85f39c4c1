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
* ``kernels.md`` from ``results/kernels/*.json`` and ``results/kernels/cpu/*.json``, and
  ``methods.md`` from ``results/methods/*.json``, when present: by device, GPUs first.
"""
from __future__ import annotations

import json
import math
import os
import sys
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import methods
from benchmark import runs_report
from benchmark.results import scan_records
from methods.atomic import atomic_write_text
from benchmark.speed import goals as speed_goals
from benchmark.speed.records import fused_kernel_sha256

# The dataset pages live in benchmark.runs_report; these names stay importable from here.
cell_text, model_label = runs_report.cell_text, runs_report.model_label
_markdown_table = runs_report.markdown_table
_num, SIZE_ORDER = runs_report.num, runs_report.SIZE_ORDER
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


def _speed_device(data: dict) -> tuple[str, str]:
    """(kind "gpu" or "cpu", device name) of a kernel or method-speed record of any layout so far."""
    hw = data.get("hardware")
    if isinstance(hw, dict):
        kind_hint = hw.get("device_type") or hw.get("device")
        name = hw.get("name") or (hw.get("device") if hw.get("device_type") else None)
    else:
        kind_hint, name = data.get("device"), hw
    kind = data.get("device_kind") or ("cpu" if str(kind_hint or "").startswith("cpu") else "gpu")
    name = str(name or "device not recorded")
    return kind, (name if kind == "gpu" or name.lower().startswith("cpu") else f"CPU {name}")


def _speed_day(name: str, data: dict) -> str:
    """The record's UTC day, from ``created`` or the ``yyyymmdd`` in its file name; '' when neither."""
    created = str(data.get("created") or "")
    if re.match(r"\d{4}-\d{2}-\d{2}", created):
        return created[:10]
    found = re.search(r"(?<!\d)(\d{4})(\d{2})(\d{2})(?!\d)", name)
    return "-".join(found.groups()) if found else ""


def _speed_order(name: str, data: dict) -> tuple:
    """Sort key, oldest first: day, creation time, then a ``-v<N>`` revision (records without a
    timestamp that were rerun the same day were told apart by that suffix)."""
    revision = re.search(r"-v(\d+)\.json$", name)
    return _speed_day(name, data), str(data.get("created") or ""), int(revision.group(1)) if revision else 1


def _commit_text(data: dict) -> str:
    git = data.get("git") if isinstance(data.get("git"), dict) else {}
    commit = git.get("commit") or data.get("git_commit")
    if not commit:
        return "commit not recorded"
    text = f"commit {str(commit)[:12]}"
    if git.get("dirty"):
        text += f" with uncommitted source changes (diff sha256 {str(git.get('diff_sha256'))[:12]})"
    return text


def _versions_text(data: dict) -> str:
    ver = data.get("versions") if isinstance(data.get("versions"), dict) else {}
    hw = data.get("hardware") if isinstance(data.get("hardware"), dict) else {}
    parts = [f"{lib} {ver.get(lib) or hw.get(lib) or (data.get(lib) if lib == 'torch' else None)}"
             for lib in ("torch", "triton") if ver.get(lib) or hw.get(lib) or (lib == "torch" and data.get(lib))]
    return ", ".join(parts)


def _by_device(entries: list[tuple[str, Any]]) -> tuple[list[tuple[tuple[str, str], list]], list[str]]:
    """Readable records grouped by device, GPUs first, each group newest first; and the skip notes."""
    groups: dict[tuple[str, str], list] = defaultdict(list)
    notes = []
    for name, data in sorted(entries, key=lambda e: e[0]):
        if not isinstance(data, dict) or "_error" in data:
            notes.append(f"- {name}: {data.get('_error', 'not a JSON object') if isinstance(data, dict) else 'not a JSON object'}")
            continue
        groups[_speed_device(data)].append((name, data))
    ordered = sorted(groups.items(), key=lambda kv: (kv[0][0] != "gpu", kv[0][1]))
    return [(key, sorted(runs, key=lambda r: _speed_order(*r), reverse=True)) for key, runs in ordered], notes


def _kernel_version_note(recorded: Any, current: str | None, commit: Any = None, kind: str = "gpu") -> str:
    """Whether a record's fused-kernel numbers belong to the kernel source in this tree."""
    if not recorded:
        return ("fused kernel source: not recorded (this record predates source hashes; "
                "its triton_fused numbers may come from an earlier kernels/moe_triton.py)")
    if kind == "cpu":
        return (f"fused kernel source: sha256 {str(recorded)[:12]}"
                + (" (the kernel in this tree)" if recorded == current else "")
                + ", run under the Triton interpreter: these timings say nothing about its GPU speed")
    if current is None or recorded == current:
        return f"fused kernel source: sha256 {str(recorded)[:12]}" + (" (the current kernel)" if current else "")
    since = f" (`git log {str(commit)[:12]}.. -- kernels/moe_triton.py` lists the changes)" if commit else ""
    return (f"fused kernel source: sha256 {str(recorded)[:12]}, **not** the current kernels/moe_triton.py "
            f"({current[:12]}): the file changed after this record{since}, so its triton_fused numbers "
            "may not hold for the current one")


def _kernel_goals(data: dict) -> tuple[list, bool]:
    """(goals, recomputed): GPU records are judged again by the current rules of conf/speed/goals.json."""
    stored = list(data.get("goals") or [])
    if _speed_device(data)[0] != "gpu" or not data.get("shapes") or not data.get("results"):
        return stored, False
    try:
        return speed_goals.evaluate_goals(data), True
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
                  "IQR ms": _scalar_text(r.get("iqr_ms")), "Peak MB": _scalar_text(r.get("peak_mem_mb")),
                  "Error": str(r.get("error") or "").splitlines()[0][:90] if r.get("error") else ""} for r in rows]
        lines += ["Whole training step (forward with auxiliary losses + backward, bf16 autocast):", "",
                  _markdown_table(table, ["Method", "Size", "Batch", "Mode", "Options", "Median ms", "IQR ms",
                                          "Peak MB", "Error"]), ""]
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
    """Host time per fused fwd+bwd call against the timer's (gpu_check's host_overhead)."""
    rows = [r for r in ((data.get("host_overhead") or {}).get("rows") or []) if isinstance(r, dict)]
    if not rows:
        return []
    us = lambda v: "n/a" if v is None else f"{1e3 * v:.0f}"  # noqa: E731
    # Records before the shared timer name its time do_bench_ms (triton.testing.do_bench).
    table = [{"Path": _scalar_text(r.get("path")), "Shape": _scalar_text(r.get("shape")),
              "Host us/call": f"{r.get('host_us_per_call', float('nan')):.0f}",
              "Wall us/call": f"{r.get('wall_us_per_call', float('nan')):.0f}",
              "Timed us": us(r.get("timed_ms", r.get("do_bench_ms")))} for r in rows]
    return ["Host time per forward+backward call (the GPU idles whenever the host takes longer than the kernels):",
            "", _markdown_table(table, ["Path", "Shape", "Host us/call", "Wall us/call", "Timed us"]), ""]


KERNEL_COLUMNS = (("Provider", "provider"), ("Shape", "shape"), ("Direction", "direction"),
                  ("Median ms", "median_ms"), ("IQR ms", "iqr_ms"), ("TFLOP/s", "tflops"), ("GB/s", ("gbs", "gbps")),
                  ("Max err", "max_err"), ("% spec FLOPs", ("pct_spec_tflops", "pct_peak_flops")),
                  ("% measured FLOPs", "pct_measured_tflops"), ("% measured BW", "pct_measured_bw"),
                  ("Peak MB", "peak_mem_mb"))


def _pick(row: dict, key) -> Any:
    for k in (key if isinstance(key, tuple) else (key,)):
        if row.get(k) is not None:
            return row[k]
    return None


def _kernel_record_lines(name: str, data: dict, current_kernel: str | None) -> list[str]:
    kind, device = _speed_device(data)
    day = _speed_day(name, data) or "date not recorded"
    meta = [device, day, f"dtype {_scalar_text(data.get('dtype'))}", _versions_text(data), _commit_text(data)]
    lines = [f"### {name}", "", "; ".join(m for m in meta if m), "",
             _kernel_version_note(data.get("fused_kernel_sha256"), current_kernel, data.get("git_commit"), kind), ""]
    results = [r for r in data.get("results", []) if isinstance(r, dict)]
    results.sort(key=lambda r: (_scalar_text(r.get("shape")), str(r.get("direction")), str(r.get("provider"))))
    if results:
        rows = [{h: _scalar_text(_pick(r, k)) for h, k in KERNEL_COLUMNS} for r in results]
        lines += [_markdown_table(rows, [h for h, _ in KERNEL_COLUMNS]), ""]
    for key, label in (("timing", "Timing"), ("flops_definition", "FLOPs"), ("error_definition", "Max err")):
        if data.get(key):
            lines += [f"{label}: {data[key]}", ""]
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
            lines += ["Kernel goals recomputed from the results with the current rules (conf/speed/goals.json; "
                      "dense reference: the fastest dense_linear time of the same rows over the routings).", ""]
    lines += _host_lines(data) + _step_lines(data)
    providers = data.get("providers") if isinstance(data.get("providers"), dict) else {}
    ran = providers.get("ran") or data.get("providers_ran")
    if ran:
        lines += [f"Providers ran: {', '.join(sorted(map(str, ran)))}", ""]
    skipped = providers.get("skipped") or data.get("providers_skipped") or {}
    if isinstance(skipped, dict) and skipped:
        lines += ["Providers skipped:", "", *[f"- {k}: {v}" for k, v in sorted(skipped.items())], ""]
    return lines


def kernels_page(entries: list[tuple[str, Any]], current_kernel: str | None = None) -> str:
    """The kernel page: GPU records first, then CPU ones, each device's newest first.

    ``current_kernel`` is the sha256 of the fused kernel source in this tree."""
    groups, notes = _by_device(entries)
    lines = ["# MoE kernel microbenchmarks", "",
             "Records of `python -m benchmark kernels` and `python -m benchmark.speed.gpu_check`, by device: "
             "GPUs first, then CPUs; each device's newest record first.", ""]
    for (kind, device), runs in groups:
        lines += [f"## {device}" + (" (GPU)" if kind == "gpu" else ""), ""]
        if kind == "cpu":
            lines += ["CPU timings, the fused kernel's under the Triton interpreter, check that every provider runs "
                      "and agrees with float64; they say nothing about GPU speed.", ""]
        for name, data in runs:
            lines += _kernel_record_lines(name, data, current_kernel)
    if notes:
        lines += ["## Files not shown", "", *notes, ""]
    return "\n".join(lines).rstrip() + "\n"




def _method_row_key(row: dict) -> tuple:
    method, size = str(row.get("method")), str(row.get("size"))
    official = method.startswith("official_")
    base = method[len("official_"):] if official else method
    m = runs_report.method_rank(base)
    s = SIZE_ORDER.index(size) if size in SIZE_ORDER else len(SIZE_ORDER)
    return s, size, official, m, method


def _method_label(row: dict) -> str:
    method, size = str(row.get("method")), str(row.get("size"))
    if method.startswith("official_"):
        return f"official {model_label(method[len('official_'):], size)}"
    return model_label(method, size)


def _ms(value: Any) -> str:
    v = _num(value)
    return "n/a" if v is None else (f"{v:.2f}" if v < 1000 else f"{v:.0f}")


def _method_table(data: dict) -> list[str]:
    rows = [r for r in list(data.get("results") or []) + list(data.get("official") or [])
            if isinstance(r, dict) and r.get("size") is not None]
    rows.sort(key=_method_row_key)
    base_spec = methods.baseline()
    dit = {r["size"]: r for r in rows if r.get("method") == base_spec.name and _num(r.get("train_step_ms"))}
    iqr = any(_num(r.get("train_step_iqr_ms")) is not None for r in rows)

    def ratio(r, key):
        base, v = dit.get(r["size"], {}).get(key), _num(r.get(key))
        return "n/a" if v is None or not _num(base) else f"{v / base:.3f}"

    columns = ["Model", "Train step ms", *(["Train IQR ms"] if iqr else []), "Eval forward ms",
               *(["Eval IQR ms"] if iqr else []), f"Train / {base_spec.display}", f"Eval / {base_spec.display}", "Train peak MiB", "Params"]
    table = []
    for r in rows:
        peak, params = _num(r.get("train_peak_mem_mib")), _num(r.get("params"))
        table.append({"Model": _method_label(r), "Train step ms": _ms(r.get("train_step_ms")),
                      "Train IQR ms": _ms(r.get("train_step_iqr_ms")), "Eval forward ms": _ms(r.get("eval_forward_ms")),
                      "Eval IQR ms": _ms(r.get("eval_forward_iqr_ms")), f"Train / {base_spec.display}": ratio(r, "train_step_ms"),
                      f"Eval / {base_spec.display}": ratio(r, "eval_forward_ms"),
                      "Train peak MiB": "n/a" if peak is None else f"{peak:.0f}",
                      "Params": "n/a" if params is None else f"{params / 1e6:.1f}M"})
    errors = [f"- {_method_label(r)}: {str(r['error']).splitlines()[0][:120]}" for r in rows if r.get("error")]
    lines = [_markdown_table(table, columns), ""] if table else ["No timed rows.", ""]
    return lines + ([*errors, ""] if errors else [])


def _method_protocol(data: dict) -> str:
    cfg = data.get("config") if isinstance(data.get("config"), dict) else {}
    dtype = cfg.get("dtype")
    parts = [f"batch {cfg['batch']}" if cfg.get("batch") else None,
             "fp32 (no autocast)" if dtype == "fp32" else (f"{dtype} autocast" if dtype else None),
             "torch.compile" if cfg.get("compile") else ("eager" if "compile" in cfg else None),
             f"{cfg['input_size']}x{cfg['input_size']} latents, patch {cfg.get('patch_size', 2)}"
             if cfg.get("input_size") else None,
             f"median of {cfg['repeats']} timed calls after {cfg.get('warmup', 0)} warm-up calls"
             if cfg.get("repeats") else None,
             "options " + ", ".join(f"{k}={v}" for k, v in sorted(cfg["options"].items())) if cfg.get("options") else None,
             "official code timed at the same settings" if data.get("official") else None,
             _versions_text(data) or None, _commit_text(data)]
    return "Protocol: " + "; ".join(p for p in parts if p) + "."


def _method_run_lines(name: str, data: dict) -> list[str]:
    return [_method_protocol(data), "", *_method_table(data)]


def methods_page(entries: list[tuple[str, Any]]) -> str:
    """Method speed: per device (GPUs first) the newest run's table, earlier runs under History."""
    groups, notes = _by_device(entries)
    lines = ["# Method speed", "",
             "Median time of one training step (forward with the auxiliary losses + backward, no optimizer "
             "update) and of one eval forward (every sample at one timestep), from "
             "`python -m benchmark.speed.method_bench`. Rows by size (S, B, L, XL), then method (DiT, DTR, "
             "Switch-DiT); ratios are to DiT of the same size in the same run. Per device the newest run "
             "is shown; earlier runs are under History.", ""]
    for (kind, device), runs in groups:
        (name, data), earlier = runs[0], runs[1:]
        day = _speed_day(name, data) or "date not recorded"
        lines += [f"## {device}" + (" (GPU)" if kind == "gpu" else ""), "",
                  f"### Newest run: {day} (`{name}`)", "", *_method_run_lines(name, data)]
        if earlier:
            lines += ["### History", ""]
            for old_name, old in earlier:
                lines += ["<details>", f"<summary>{_speed_day(old_name, old) or 'date not recorded'} "
                          f"(<code>{old_name}</code>)</summary>", "", *_method_run_lines(old_name, old),
                          "</details>", ""]
    if notes:
        lines += ["## Files not shown", "", *notes, ""]
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

    kernels = _load_json_dir(results_dir / "kernels") + [
        (f"cpu/{name}", data) for name, data in _load_json_dir(results_dir / "kernels" / "cpu")]
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
