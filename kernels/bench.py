"""Microbenchmarks of the Switch-DiT expert linear (arXiv 2403.09176, Sec. 3.2).

Times out[n] = sum_j g_j (x[n] @ W[e_j] + b[e_j]) at the real model shapes
(D = 384/768/1024/1152 for S/B/L/XL; L = 256 tokens per sample at 256 px with
patch 2, 64 with patch 4; 32 samples; E = 3 experts, k = 2) under two
routings: "random" (uniform-random timesteps, so random experts per sample)
and "shared" (one timestep for the batch, every sample on the same pair).

Providers (a table, PROVIDERS):
  triton_fused  the fused kernel of kernels/moe_triton.py
  official      the official Switch-DiT formulation (kernels/moe_baselines.py)
  grouped_mm    gather + torch._grouped_mm + scatter, where available
  dense_linear  one dense D -> D linear over the same N*k*L rows: the
                roofline-ish reference a k-expert layer cannot beat for free
  torch         the plain-torch backend of kernels.moe_linear

Numbers per provider x shape x direction ("fwd" under no_grad, "fwd+bwd"
with grads for every float input): median time (CUDA events through
triton.testing.do_bench on GPU, time.perf_counter on CPU), nominal TFLOP/s
(2*rows*D_in*D_out per GEMM with rows = N*k*L: one GEMM forward, three
forward+backward, for every provider, so TFLOP/s compare like with like;
the fused kernel does fewer real MACs, see kernels/moe_triton.py, so its
nominal rate can exceed what the hardware executes),
nominal GB/s (each input and output tensor read or written once), percent of
the device's peak, and peak memory (torch.cuda.max_memory_allocated: absolute
and above the pre-call baseline; null on CPU). Results go to
results/kernels/<device-slug>-<YYYYMMDD>.json, written atomically.

Run: python -m kernels.bench [--quick] [--out DIR] [--interpret-small]
"""
from __future__ import annotations

import argparse
import datetime as _dt
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from typing import Callable

import torch

from . import moe_baselines, moe_torch
from .atomic import atomic_write_json
from .source import fused_kernel_sha256

SIZES = {"S": 384, "B": 768, "L": 1024, "XL": 1152}
SEQS = (256, 64)
ROUTINGS = ("random", "shared")
NUM_SAMPLES, NUM_EXPERTS, TOP_K = 32, 3, 2
DIRECTIONS = ("fwd", "fwd+bwd")
GEMMS_PER_DIRECTION = {"fwd": 1, "fwd+bwd": 3}

# Device peaks: spec sheet dense numbers and what the lent machines measured.
# Matched by substring of the device name, most specific first.
DEVICE_PEAKS = (
    ("H100 PCIe", {"spec_tflops": {"bfloat16": 756, "float16": 756, "float32": 378},
                   "measured_tflops": {}, "spec_gbs": 2000, "measured_gbs": None}),
    ("H100", {"spec_tflops": {"bfloat16": 989, "float16": 989, "float32": 495},
              "measured_tflops": {"bfloat16": 800, "float16": 800}, "spec_gbs": 3350, "measured_gbs": 3000}),
    ("H200", {"spec_tflops": {"bfloat16": 989, "float16": 989, "float32": 495},
              "measured_tflops": {"bfloat16": 790, "float16": 790}, "spec_gbs": 4800, "measured_gbs": 4300}),
)

# Goals for the fused kernel, checked on fwd+bwd at the shapes named in GOAL_SHAPES.
GOALS = {
    "speedup_vs_official": 1.5,   # official time / fused time >= 1.5
    "memory_vs_official": 0.6,    # fused extra peak memory / official's <= 0.6
    "throughput_vs_dense": 0.6,   # dense_linear time / fused time >= 0.6 (same nominal FLOPs)
    "switch_dit_step_vs_dit": 1.15,  # whole training step (fwd+bwd, aux losses) Switch-DiT / DiT <= 1.15
}


@dataclass(frozen=True)
class Shape:
    size: str
    d: int
    seq: int
    n: int = NUM_SAMPLES
    e: int = NUM_EXPERTS
    k: int = TOP_K
    routing: str = "random"

    @property
    def name(self) -> str:
        return f"{self.size}-D{self.d}-L{self.seq}-N{self.n}-{self.routing}"

    @property
    def rows(self) -> int:
        return self.n * self.k * self.seq


def default_shapes(quick: bool = False, interpret_small: bool = False) -> list[Shape]:
    if interpret_small:
        return [Shape("tiny", 32, 8, n=4, routing=r) for r in ROUTINGS]
    if quick:
        return [Shape(s, SIZES[s], 64, n=4, routing=r) for s in ("S", "B") for r in ROUTINGS]
    return [Shape(s, d, seq, routing=r) for s, d in SIZES.items() for seq in SEQS for r in ROUTINGS]


# ----------------------------------------------------------------- inputs
def make_inputs(shape: Shape, device, dtype, seed: int = 0) -> dict:
    gen = torch.Generator(device="cpu").manual_seed(seed)
    d, n, e, k = shape.d, shape.n, shape.e, shape.k
    x = torch.randn(n, shape.seq, d, generator=gen)
    w = torch.randn(e, d, d, generator=gen) / math.sqrt(d)
    b = torch.randn(e, d, generator=gen) * 0.1
    logits = torch.randn(n, e, generator=gen)
    if shape.routing == "shared":
        logits = logits[:1].expand(n, e)  # same timestep -> same router output
    gates, idx = torch.softmax(logits, dim=1).topk(k, dim=1)
    dy = torch.randn(n, shape.seq, d, generator=gen)
    out = {name: t.to(device=device, dtype=dtype).contiguous() for name, t in
           (("x", x), ("w", w), ("b", b), ("g", gates), ("dy", dy))}
    out["idx"] = idx.to(device).contiguous()
    return out


# --------------------------------------------------------------- providers
def _moe_provider(fn: Callable) -> Callable:
    def build(inp: dict):
        leaves = [inp[name].detach().clone().requires_grad_(True) for name in ("x", "w", "b", "g")]
        x, w, b, g = leaves
        idx = inp["idx"]
        return (lambda: fn(x, w, b, idx, g)), leaves, inp["dy"]
    return build


def _build_dense(inp: dict):
    x, w = inp["x"], inp["w"]
    k = inp["idx"].shape[1]
    rows = x.reshape(-1, x.shape[-1]).repeat(k, 1).detach().requires_grad_(True)
    weight = w[0].detach().clone().requires_grad_(True)
    bias = inp["b"][0].detach().clone().requires_grad_(True)
    dy = inp["dy"].reshape(-1, w.shape[2]).repeat(k, 1)
    return (lambda: moe_baselines.dense_linear_rows(rows, weight, bias)), [rows, weight, bias], dy


def _triton_fn(x, w, b, idx, g):
    from .moe_triton import moe_linear_triton

    return moe_linear_triton(x, w, b, idx, g)


def _triton_available(device, dtype, interpret_small):
    try:
        from . import moe_triton
    except Exception as exc:  # a broken Triton install must not stop the other providers
        return False, f"kernels.moe_triton failed to import: {exc!r}"
    if device.type == "cuda":
        return True, ""
    if not moe_triton.INTERPRET:
        return False, "no CUDA and TRITON_INTERPRET was not set before importing kernels.moe_triton"
    if not interpret_small:
        return False, "interpreter far too slow at real shapes on CPU (use --interpret-small)"
    if dtype == torch.bfloat16:
        return False, "bf16 tl.dot is not exact under the Triton interpreter"
    return True, ""


def _always(device, dtype, interpret_small):
    return True, ""


def _grouped_mm_available(device, dtype, interpret_small):
    return moe_baselines.grouped_mm_available(device, dtype)


PROVIDERS: dict[str, tuple[Callable, Callable]] = {
    "triton_fused": (_moe_provider(_triton_fn), _triton_available),
    "official": (_moe_provider(moe_baselines.moe_linear_official), _always),
    "grouped_mm": (_moe_provider(moe_baselines.moe_linear_grouped_mm), _grouped_mm_available),
    "dense_linear": (_build_dense, _always),
    "torch": (_moe_provider(moe_torch.moe_linear_torch), _always),
}


# ------------------------------------------------------------------ timing
def _time_cpu(fn: Callable, reps: int, warmup: int = 0) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def _time_cuda(fn: Callable, grad_to_none, warmup_ms: float = 25, rep_ms: float = 100) -> float:
    import triton.testing

    # do_bench's warmup/rep are milliseconds of running, not iteration counts.
    return float(triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, grad_to_none=grad_to_none,
                                         return_mode="median"))


def _peak_memory(fn: Callable, leaves, device) -> tuple[float | None, float | None]:
    if device.type != "cuda":
        return None, None
    for t in leaves:
        t.grad = None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    for t in leaves:
        t.grad = None
    mb = 1024.0 ** 2
    return peak / mb, (peak - base) / mb


def nominal_flops(shape: Shape, direction: str) -> float:
    return 2.0 * shape.rows * shape.d * shape.d * GEMMS_PER_DIRECTION[direction]


def nominal_bytes(shape: Shape, direction: str, provider: str, itemsize: int) -> float:
    """Each tensor of the op read or written once (x, W, b, out; + dy, dx, dW, db)."""
    d = shape.d
    act_rows = shape.rows if provider == "dense_linear" else shape.n * shape.seq
    weights = (1 if provider == "dense_linear" else shape.e) * (d * d + d)
    elems = 2 * act_rows * d + weights
    if direction == "fwd+bwd":
        # backward reads dy, x, W and writes dx, dW, db
        elems += 3 * act_rows * d + 2 * weights
    return float(elems * itemsize)


def device_peaks(device) -> dict | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, peaks in DEVICE_PEAKS:
        if key in name:
            return {"matched": key, **peaks}
    return None


def _measure(provider: str, shape: Shape, inp: dict, device, dtype, reps: int) -> list[dict]:
    build, _ = PROVIDERS[provider]
    call, leaves, dy = build(inp)
    peaks = device_peaks(device)
    itemsize = torch.empty((), dtype=dtype).element_size()
    dname = str(dtype).replace("torch.", "")
    rows = []
    for direction in DIRECTIONS:
        row = {"provider": provider, "shape": shape.name, "direction": direction}
        try:
            if direction == "fwd":
                def fn():
                    with torch.no_grad():
                        return call()
            else:
                def fn():
                    call().backward(dy)
            fn()  # compile / warm caches before timing and memory
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                ms = _time_cuda(fn, leaves)
            else:
                ms = _time_cpu(lambda: (fn(), [setattr(t, "grad", None) for t in leaves]), reps)
            peak_mb, extra_mb = _peak_memory(fn, leaves, device)
            tflops = nominal_flops(shape, direction) / (ms * 1e-3) / 1e12
            gbs = nominal_bytes(shape, direction, provider, itemsize) / (ms * 1e-3) / 1e9
            row.update(median_ms=ms, tflops=tflops, gbs=gbs, peak_mem_mb=peak_mb, extra_mem_mb=extra_mb)
            if peaks is not None:
                spec = peaks["spec_tflops"].get(dname)
                meas = peaks["measured_tflops"].get(dname)
                row["pct_spec_tflops"] = 100 * tflops / spec if spec else None
                row["pct_measured_tflops"] = 100 * tflops / meas if meas else None
                row["pct_spec_bw"] = 100 * gbs / peaks["spec_gbs"] if peaks["spec_gbs"] else None
                row["pct_measured_bw"] = 100 * gbs / peaks["measured_gbs"] if peaks["measured_gbs"] else None
        except Exception as exc:  # one failing provider must not end the run
            row["error"] = f"{type(exc).__name__}: {exc}"
            row["traceback"] = traceback.format_exc()
            print(f"[kernels.bench] {provider} {shape.name} {direction} failed:\n{row['traceback']}", file=sys.stderr)
        finally:
            for t in leaves:
                t.grad = None
        rows.append(row)
    return rows


# ------------------------------------------------------------- whole step
def make_step(method_pkg, method: str, size: str, device, dtype, batch: int = NUM_SAMPLES, input_size: int = 32,
              compile: bool = False, **options):
    """(step, params) for one model: a training step's model work, forward with the auxiliary
    losses (Switch-DiT's prior JSD) and backward; no optimizer update. ``compile`` wraps the
    model in torch.compile (compiled on the first call)."""
    model = method_pkg.build_model(method, size, input_size=input_size, **options).to(device)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    if compile:
        model = torch.compile(model)
    x = torch.randn(batch, 4, input_size, input_size, device=device)
    t = torch.randint(0, 1000, (batch,), device=device)
    y = torch.randint(0, 1000, (batch,), device=device)

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            out, aux = model(x, t, y, return_aux=True)
        loss = out.float().square().mean()
        for value in aux.values():
            loss = loss + value.float()
        loss.backward()

    return step, params


def whole_step_benchmarks(device, dtype, sizes=("S",), methods=("dit", "dtr", "switch_dit"),
                          batch: int = NUM_SAMPLES, input_size: int = 32, cpu_reps: int = 3,
                          options: dict | None = None, compile: bool = False) -> dict:
    """Forward (with auxiliary losses) + backward of each method's model (optional: needs `methods`).

    ``options`` maps a method to build options (e.g. ``{"switch_dit": {"moe_backend": "torch"}}``);
    they are recorded in the row."""
    try:
        import methods as method_pkg  # not a dependency of kernels: only used when present
    except Exception as exc:
        return {"skipped": f"methods package not importable: {exc!r}", "rows": []}
    rows = []
    for method in methods:
        for size in sizes:
            opts = dict((options or {}).get(method, {}))
            row = {"method": method, "size": size, "batch": batch, "input_size": input_size}
            if opts:
                row["options"] = opts
            if compile:
                row["compiled"] = True
            try:
                step, params = make_step(method_pkg, method, size, device, dtype, batch, input_size, compile, **opts)
                step()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                    # ~100 ms steps at XL: 2 s of repeats gives a median over ~20 of them.
                    row["median_ms"] = _time_cuda(step, params, warmup_ms=300, rep_ms=2000)
                else:
                    row["median_ms"] = _time_cpu(_clearing_grads(step, params), cpu_reps)
                row["peak_mem_mb"], row["extra_mem_mb"] = _peak_memory(step, params, device)
                del step, params
            except Exception as exc:
                row["error"] = f"{type(exc).__name__}: {exc}"
                print(f"[kernels.bench] whole step {method}-{size} failed:\n{traceback.format_exc()}", file=sys.stderr)
            rows.append(row)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return {"skipped": None, "rows": rows}


# ------------------------------------------------------------------ record
def hardware_info(device) -> dict:
    import triton

    info = {"device_type": device.type, "torch": torch.__version__, "triton": triton.__version__,
            "cuda": torch.version.cuda, "python": platform.python_version(),
            "cpu": platform.processor() or platform.machine(), "cpu_threads": torch.get_num_threads()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(device=props.name, sm_count=props.multi_processor_count,
                    capability=f"{props.major}.{props.minor}", memory_gb=round(props.total_memory / 1024 ** 3, 1))
    else:
        info["device"] = f"cpu ({info['cpu']})"
    return info


def git_commit() -> str | None:
    """HEAD of the checkout, or $BENCH_GIT_COMMIT where the tree was copied without its history."""
    if os.environ.get("BENCH_GIT_COMMIT"):
        return os.environ["BENCH_GIT_COMMIT"]
    try:
        res = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                             cwd=os.path.dirname(os.path.abspath(__file__)))
        return (res.stdout.strip() or None) if res.returncode == 0 else None
    except Exception:
        return None


def _clearing_grads(step, params):
    """``step`` followed by dropping its gradients, so CPU repeats do not accumulate them."""
    def run():
        step()
        for p in params:
            p.grad = None
    return run


def record_stem(device) -> str:
    """``<device>-<yyyymmdd>[-<commit7>]``: records of one device and day from different commits do not
    overwrite each other."""
    commit = git_commit()
    return f"{device_slug(device)}-{_dt.date.today():%Y%m%d}" + (f"-{commit[:7]}" if commit else "")


def device_slug(device) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def write_json_atomic(record: dict, path: str) -> str:
    return str(atomic_write_json(path, record, indent=1, default=str))


def _find(results, provider, shape_name, direction):
    for row in results:
        if row["provider"] == provider and row["shape"] == shape_name and row["direction"] == direction:
            return row if "median_ms" in row else None
    return None


def _fastest_dense(record: dict, name: str) -> dict | None:
    """The dense_linear fwd+bwd row for `name`'s rows, fastest over the routings.

    A dense linear does not depend on routing, so every routing of one
    (D, L, N, k) times the same work; the fastest of those measurements is
    the reference (a slow outlier, e.g. clocks still ramping, must not make
    the fused kernel look better).
    """
    shapes = {s["name"]: s for s in record.get("shapes", [])}
    key = lambda s: tuple(s.get(f) for f in ("d", "seq", "n", "k"))  # noqa: E731
    if name not in shapes:
        return _find(record["results"], "dense_linear", name, "fwd+bwd")
    rows = [_find(record["results"], "dense_linear", other, "fwd+bwd")
            for other, s in shapes.items() if key(s) == key(shapes[name])]
    rows = [r for r in rows if r]
    return min(rows, key=lambda r: r["median_ms"]) if rows else None


def evaluate_goals(record: dict, shape_names=None) -> list[dict]:
    """Pass/fail of GOALS for the fused kernel, fwd+bwd, per shape."""
    names = shape_names or [s["name"] for s in record["shapes"]]
    out = []
    for name in names:
        fused = _find(record["results"], "triton_fused", name, "fwd+bwd")
        official = _find(record["results"], "official", name, "fwd+bwd")
        dense = _fastest_dense(record, name)
        checks = []
        if fused and official:
            checks.append(("speedup_vs_official", official["median_ms"] / fused["median_ms"], ">="))
            if fused.get("extra_mem_mb") is not None and official.get("extra_mem_mb"):
                checks.append(("memory_vs_official", fused["extra_mem_mb"] / official["extra_mem_mb"], "<="))
        if fused and dense:
            checks.append(("throughput_vs_dense", dense["median_ms"] / fused["median_ms"], ">="))
        if not checks:
            out.append({"shape": name, "goal": "all", "value": None, "target": None, "passed": None,
                        "note": "fused, official or dense_linear did not run"})
        for goal, value, op in checks:
            target = GOALS[goal]
            passed = value >= target if op == ">=" else value <= target
            out.append({"shape": name, "goal": goal, "value": value, "target": f"{op} {target}", "passed": passed})
    return out


def step_goals(whole_step: dict | None) -> list[dict]:
    """Switch-DiT / DiT whole-step time per size where both ran (the 1.15x goal)."""
    # Rows built with non-default options (e.g. moe_backend=torch) or compiled are context: the goal
    # is the eager step.
    rows = [r for r in (whole_step or {}).get("rows", [])
            if "median_ms" in r and not r.get("options") and not r.get("compiled")]
    by = {(r["method"], r["size"]): r["median_ms"] for r in rows}
    out = []
    for size in sorted({size for _, size in by}):
        if ("dit", size) in by and ("switch_dit", size) in by:
            value = by[("switch_dit", size)] / by[("dit", size)]
            target = GOALS["switch_dit_step_vs_dit"]
            out.append({"shape": f"{size} whole step", "goal": "switch_dit_step_vs_dit", "value": value,
                        "target": f"<= {target}", "passed": value <= target})
    return out


def format_table(record: dict) -> str:
    head = ["provider", "shape", "dir", "ms", "TFLOP/s", "GB/s", "%peak", "peak MB", "extra MB"]
    lines = []
    for r in record["results"]:
        if "median_ms" not in r:
            lines.append([r["provider"], r["shape"], r["direction"], "ERROR", r.get("error", "")[:40], "", "", "", ""])
            continue
        pct = r.get("pct_measured_tflops") or r.get("pct_spec_tflops")
        fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
        lines.append([r["provider"], r["shape"], r["direction"], fmt(r["median_ms"], ".3f"), fmt(r["tflops"], ".3g"),
                      fmt(r["gbs"], ".0f"), fmt(pct, ".1f"), fmt(r["peak_mem_mb"], ".0f"), fmt(r["extra_mem_mb"], ".0f")])
    widths = [max(len(str(c)) for c in col) for col in zip(head, *lines)]
    render = lambda row: "  ".join(str(c).ljust(w) for c, w in zip(row, widths))  # noqa: E731
    text = [render(head), render(["-" * w for w in widths])] + [render(r) for r in lines]
    skipped = record["providers"]["skipped"]
    if skipped:
        text.append("skipped: " + "; ".join(f"{k}: {v}" for k, v in skipped.items()))
    return "\n".join(text)


def format_goals(goals: list[dict]) -> str:
    lines = []
    for g in goals:
        if g["passed"] is None:
            lines.append(f"GOAL ?    {g['shape']}: {g['note']}")
        else:
            lines.append(f"GOAL {'PASS' if g['passed'] else 'FAIL'} {g['goal']:<22} {g['value']:.3f} (target {g['target']})"
                         f"  [{g['shape']}]")
    return "\n".join(lines)


def run_benchmarks(*, device=None, dtype=None, quick: bool = False, out_dir: str | None = "results/kernels",
                   interpret_small: bool = False, shapes: list[Shape] | None = None,
                   providers: list[str] | None = None, whole_step: bool = False,
                   whole_step_sizes=("S",), verbose: bool = True, deadline: float | None = None) -> dict:
    """Run the provider x shape x direction grid; returns (and writes) the record.

    device/dtype default to CUDA + bfloat16 when a GPU is present, else CPU +
    float32. On CPU the fused Triton kernel is skipped (with the reason in the
    record) unless `interpret_small`, which also shrinks the shapes. Shapes not
    started by `deadline` (a time.monotonic() value) are listed as skipped.
    """
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    elif isinstance(dtype, str):
        if not hasattr(torch, dtype) or not isinstance(getattr(torch, dtype), torch.dtype):
            raise ValueError(f"unknown dtype {dtype!r}; valid: float32, float16, bfloat16")
        dtype = getattr(torch, dtype)
    if interpret_small and device.type != "cuda":
        os.environ.setdefault("TRITON_INTERPRET", "1")  # only effective before kernels.moe_triton is imported
    names = list(providers or PROVIDERS)
    unknown = [p for p in names if p not in PROVIDERS]
    if unknown:
        raise ValueError(f"unknown providers {unknown}; valid: {list(PROVIDERS)}")
    shapes = shapes or default_shapes(quick=quick, interpret_small=interpret_small)
    ran, skipped = [], {}
    for name in names:
        ok, reason = PROVIDERS[name][1](device, dtype, interpret_small)
        (ran.append(name) if ok else skipped.__setitem__(name, reason))
    reps = 3 if (quick or interpret_small) else 5
    results, late = [], []
    for shape in shapes:
        if deadline is not None and time.monotonic() > deadline:
            late.append(shape.name)
            continue
        inp = make_inputs(shape, device, dtype)
        for name in ran:
            results.extend(_measure(name, shape, inp, device, dtype, reps))
            if verbose:
                for r in results[-len(DIRECTIONS):]:
                    ms = f"{r['median_ms']:.3f} ms" if "median_ms" in r else "ERROR"
                    print(f"[kernels.bench] {name:<13} {shape.name:<28} {r['direction']:<8} {ms}", flush=True)
        del inp
        if device.type == "cuda":
            torch.cuda.empty_cache()
    record = {
        "schema": 1,
        "kind": "kernel_benchmark",
        "op": "moe_linear (Switch-DiT expert linear, arXiv 2403.09176)",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "hardware": hardware_info(device),
        "git_commit": git_commit(),
        "fused_kernel_sha256": fused_kernel_sha256(),
        "dtype": str(dtype).replace("torch.", ""),
        "quick": quick,
        "interpret_small": interpret_small,
        "timing": "triton.testing.do_bench median (CUDA events)" if device.type == "cuda"
                  else f"time.perf_counter median of {reps}",
        "flops_definition": "nominal 2*N*k*L*D_in*D_out per GEMM; 1 GEMM fwd, 3 fwd+bwd",
        "memory_definition": "torch.cuda.max_memory_allocated; extra = peak minus allocation before the call",
        "device_peaks": device_peaks(device),
        "shapes": [{"name": s.name, **asdict(s)} for s in shapes],
        "providers": {"ran": ran, "skipped": skipped},
        "shapes_skipped_for_time": late,
        "results": results,
    }
    if whole_step:
        record["whole_step"] = whole_step_benchmarks(device, dtype, sizes=whole_step_sizes)
    # Speed goals are about the GPU; CPU timings (interpreter included) say nothing about them.
    record["goals"] = evaluate_goals(record) if device.type == "cuda" else []
    record["step_goals"] = step_goals(record.get("whole_step")) if device.type == "cuda" else []
    if out_dir:
        record["path"] = write_json_atomic(record, os.path.join(out_dir, f"{record_stem(device)}.json"))
    if verbose:
        print(format_table(record))
        if record["goals"] or record["step_goals"]:
            print(format_goals(record["goals"] + record["step_goals"]))
        if out_dir:
            print(f"[kernels.bench] wrote {record['path']}")
    return record


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kernels.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="N=4, L=64, sizes S and B only (CPU: < 60 s)")
    parser.add_argument("--out", default="results/kernels", help="directory for the JSON record ('' to skip)")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    parser.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--interpret-small", action="store_true",
                        help="on CPU, run the Triton kernel under TRITON_INTERPRET=1 at tiny shapes")
    parser.add_argument("--providers", default=None, help=f"comma list from {list(PROVIDERS)}")
    parser.add_argument("--whole-step", action="store_true",
                        help="also time whole model steps, fwd with aux losses + bwd (needs `methods`; slow on CPU)")
    args = parser.parse_args(argv)
    run_benchmarks(device=args.device, dtype=args.dtype, quick=args.quick, out_dir=args.out or None,
                   interpret_small=args.interpret_small,
                   providers=args.providers.split(",") if args.providers else None, whole_step=args.whole_step)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
