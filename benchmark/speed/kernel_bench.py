"""Microbenchmarks of the Switch-DiT expert linear (arXiv 2403.09176, Sec. 3.2).

Times out[n] = sum_j g_j (x[n] @ W[e_j] + b[e_j]) at the shapes of benchmark/speed/shapes.py
for every provider the machine can run (a table, PROVIDERS):

  triton_fused  the fused kernel of kernels/moe_triton.py (on a CPU under the Triton
                interpreter, at small shapes and in float32 or float16: bf16 tl.dot is
                not exact there)
  official      the official Switch-DiT formulation (benchmark/speed/baselines.py)
  grouped_mm    gather + torch._grouped_mm + scatter, where available
  dense_linear  one dense D -> D linear over the same N*k*L rows: the roofline-ish
                reference a k-expert layer cannot beat for free
  torch         the plain-torch backend of kernels.moe_linear

Per provider x shape x direction ("fwd" under no_grad, "fwd+bwd" with grads for every
float input): median and IQR of the time (benchmark/speed/timing.py), nominal TFLOP/s
(2*rows*D_in*D_out per GEMM with rows = N*k*L: one GEMM forward, three forward+backward,
for every provider, so rates compare like with like; the fused kernel does fewer real
MACs, see kernels/moe_triton.py, so its nominal rate can exceed what the hardware
executes), nominal GB/s (each input and output tensor read or written once), percent of
the device's peak (conf/speed/goals.json), peak memory (CUDA only) and the largest error
against float64: max over the output and, fwd+bwd, every input gradient of
max|got - ref| / max|ref|, with ref the per-sample loop (dense_linear: addmm) in float64
on the same inputs.

Run: python -m benchmark kernels [--quick] [...] (or python -m benchmark.speed.kernel_bench).
"""
from __future__ import annotations

import argparse
import functools
import math
import os
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from typing import Callable

import torch

from kernels import moe_torch
from kernels.registry import Registry

from . import baselines, goals, records
from .shapes import Shape, default_shapes
from .steps import whole_step_benchmarks
from .timing import describe, measure, peak_memory_mb

DIRECTIONS = ("fwd", "fwd+bwd")
GEMMS_PER_DIRECTION = {"fwd": 1, "fwd+bwd": 3}
# (warm-up calls, timed calls) per row.
KERNEL_REPEATS = {"cuda": (10, 100), "cpu": (1, 5)}
# The Triton interpreter runs each program as numpy ops: above this many MACs per GEMM a
# fwd+bwd call takes seconds, so on a CPU the fused kernel runs at shapes up to it.
INTERPRETER_MAX_MACS = 1 << 22
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def use_interpreter_without_gpu() -> None:
    """Without a GPU, run Triton kernels under the interpreter; Triton reads this when a kernel
    module is imported, so it must happen before anything imports kernels.moe_triton."""
    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")


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


def moe_call(fn: Callable, inp: dict, dtype=None):
    """(call, leaves, dy) for an MoE formulation fn(x, w, b, idx, g); leaves x, w, b, g get grads."""
    leaves = [inp[name].detach().to(dtype or inp[name].dtype).clone().requires_grad_(True)
              for name in ("x", "w", "b", "g")]
    x, w, b, g = leaves
    idx = inp["idx"]
    return (lambda: fn(x, w, b, idx, g)), leaves, inp["dy"].to(dtype or inp["dy"].dtype)


def dense_call(inp: dict, dtype=None):
    """(call, leaves, dy) for one dense linear over the N*k*L rows an MoE with k experts multiplies."""
    dtype = dtype or inp["x"].dtype
    x, w = inp["x"].to(dtype), inp["w"].to(dtype)
    k = inp["idx"].shape[1]
    rows = x.reshape(-1, x.shape[-1]).repeat(k, 1).detach().requires_grad_(True)
    weight = w[0].detach().clone().requires_grad_(True)
    bias = inp["b"][0].to(dtype).detach().clone().requires_grad_(True)
    dy = inp["dy"].to(dtype).reshape(-1, w.shape[2]).repeat(k, 1)
    return (lambda: baselines.dense_linear_rows(rows, weight, bias)), [rows, weight, bias], dy


# --------------------------------------------------------------- providers
def _triton(x, w, b, idx, g, plan=None):
    from kernels.moe_triton import moe_linear_triton

    return moe_linear_triton(x, w, b, idx, g, plan=plan)


def _triton_available(device, dtype, shape: Shape):
    try:
        from kernels import moe_triton
    except Exception as exc:  # a broken Triton install must not stop the other providers
        return False, f"kernels.moe_triton failed to import: {exc!r}"
    if device.type == "cuda":
        return True, ""
    if not moe_triton.INTERPRET:
        return False, "no CUDA, and TRITON_INTERPRET=1 was not set before kernels.moe_triton was imported"
    if dtype == torch.bfloat16:
        return False, "bf16 tl.dot is not exact under the Triton interpreter; use float32 or float16 on a CPU"
    if shape.rows * shape.d * shape.d > INTERPRETER_MAX_MACS:
        return False, (f"the Triton interpreter would take minutes at {shape.name}; "
                       "--quick runs it at small shapes")
    return True, ""


def _always(device, dtype, shape):
    return True, ""


def _grouped_mm_available(device, dtype, shape):
    return baselines.grouped_mm_available(device, dtype)


@dataclass(frozen=True)
class Provider:
    fn: Callable          # fn(x, w, b, idx, g) -> out; unused for the dense reference
    available: Callable   # (device, dtype, shape) -> (usable, reason)
    dense: bool = False   # times dense_call instead of an MoE formulation


PROVIDERS: Registry[Provider] = Registry("provider", {
    "triton_fused": Provider(_triton, _triton_available),
    "official": Provider(baselines.moe_linear_official, _always),
    "grouped_mm": Provider(baselines.moe_linear_grouped_mm, _grouped_mm_available),
    "dense_linear": Provider(baselines.dense_linear_rows, _always, dense=True),
    "torch": Provider(moe_torch.moe_linear_torch, _always),
})


def build(name: str, inp: dict, plan=None):
    """(call, leaves, dy) of provider ``name``; ``plan`` (a kernels.moe_triton.TilePlan) sets the fused tiles."""
    provider = PROVIDERS[name]
    if provider.dense:
        return dense_call(inp)
    fn = functools.partial(_triton, plan=plan) if name == "triton_fused" else provider.fn
    return moe_call(fn, inp)


# --------------------------------------------------------------- reference
def _outputs(call, leaves, dy, direction: str) -> list[torch.Tensor]:
    """The output and, for fwd+bwd, the gradient of every leaf, from one call."""
    for t in leaves:
        t.grad = None
    if direction == "fwd":
        with torch.no_grad():
            return [call()]
    out = call()
    out.backward(dy)
    grads = [t.grad for t in leaves]
    for t in leaves:
        t.grad = None
    return [out.detach()] + grads


def reference(inp: dict, dense: bool) -> list[torch.Tensor]:
    """What every provider should return, in float64: the output and every input gradient of the
    per-sample loop, or of addmm for dense_linear."""
    call, leaves, dy = dense_call(inp, torch.float64) if dense else moe_call(baselines.moe_linear_loop, inp,
                                                                              torch.float64)
    return _outputs(call, leaves, dy, "fwd+bwd")


def max_error(got: list[torch.Tensor], want: list[torch.Tensor]) -> float:
    """max over tensors of max|got - want| / max|want| (1 where want is all zeros)."""
    worst = 0.0
    for g, w in zip(got, want, strict=True):
        scale = w.abs().max().item() or 1.0
        worst = max(worst, (g.double() - w).abs().max().item() / scale)
    return worst


# ------------------------------------------------------------ arithmetic
def nominal_flops(shape: Shape, direction: str) -> float:
    return 2.0 * shape.rows * shape.d * shape.d * GEMMS_PER_DIRECTION[direction]


def nominal_bytes(shape: Shape, direction: str, dense: bool, itemsize: int) -> float:
    """Each tensor of the op read or written once (x, W, b, out; + dy, dx, dW, db)."""
    d = shape.d
    act_rows = shape.rows if dense else shape.n * shape.seq
    weights = (1 if dense else shape.e) * (d * d + d)
    elems = 2 * act_rows * d + weights
    if direction == "fwd+bwd":
        # backward reads dy, x, W and writes dx, dW, db
        elems += 3 * act_rows * d + 2 * weights
    return float(elems * itemsize)


def rates(shape: Shape, direction: str, dense: bool, itemsize: int, ms: float, dtype_name: str,
          peaks: dict | None) -> dict:
    """TFLOP/s, GB/s and their share of the device's peaks for one timed row."""
    seconds = ms * 1e-3
    out = {"tflops": nominal_flops(shape, direction) / seconds / 1e12,
           "gbs": nominal_bytes(shape, direction, dense, itemsize) / seconds / 1e9}
    if peaks is not None:
        pct = lambda v, peak: 100 * v / peak if peak else None  # noqa: E731
        out.update(pct_spec_tflops=pct(out["tflops"], peaks["spec_tflops"].get(dtype_name)),
                   pct_measured_tflops=pct(out["tflops"], peaks["measured_tflops"].get(dtype_name)),
                   pct_spec_bw=pct(out["gbs"], peaks["spec_gbs"]),
                   pct_measured_bw=pct(out["gbs"], peaks["measured_gbs"]))
    return out


# ------------------------------------------------------------------ rows
def measure_rows(name: str, shape: Shape, inp: dict, refs: dict, device, dtype, warmup: int, repeats: int,
                 peaks: dict | None, plan=None) -> list[dict]:
    """One row per direction for provider ``name`` at ``shape``; a failure is a row with its error."""
    provider = PROVIDERS[name]
    call, leaves, dy = build(name, inp, plan)
    itemsize = torch.empty((), dtype=dtype).element_size()
    dtype_name = str(dtype).replace("torch.", "")
    rows = []
    for direction in DIRECTIONS:
        row = {"provider": name, "shape": shape.name, "direction": direction}
        try:
            if direction == "fwd":
                def fn():
                    with torch.no_grad():
                        return call()
            else:
                def fn():
                    call().backward(dy)
            if provider.dense not in refs:
                refs[provider.dense] = reference(inp, provider.dense)
            got = _outputs(call, leaves, dy, direction)
            row["max_err"] = max_error(got, refs[provider.dense][:len(got)])
            timing = measure(fn, device, warmup=warmup, repeats=repeats, clear=leaves)
            peak_mb, extra_mb = peak_memory_mb(fn, device, clear=leaves)
            row.update(timing.fields(), **rates(shape, direction, provider.dense, itemsize, timing.median_ms,
                                                dtype_name, peaks), peak_mem_mb=peak_mb, extra_mem_mb=extra_mb)
        except Exception as exc:  # one failing provider must not end the run
            row["error"] = f"{type(exc).__name__}: {exc}"
            row["traceback"] = traceback.format_exc()
            print(f"[kernels] {name} {shape.name} {direction} failed:\n{row['traceback']}", file=sys.stderr)
        finally:
            for t in leaves:
                t.grad = None
        rows.append(row)
    return rows


COLUMNS = (  # (header, width, format of the row's value)
    ("provider", 13, lambda r: r["provider"]),
    ("shape", 28, lambda r: r["shape"]),
    ("dir", 8, lambda r: r["direction"]),
    ("median ms", 10, lambda r: _g(r.get("median_ms"))),
    ("IQR ms", 9, lambda r: _g(r.get("iqr_ms"))),
    ("TFLOP/s", 8, lambda r: _g(r.get("tflops"))),
    ("GB/s", 8, lambda r: _g(r.get("gbs"))),
    ("max err", 8, lambda r: _g(r.get("max_err"), ".1e")),
    ("%peak", 6, lambda r: _g(r.get("pct_measured_tflops") or r.get("pct_spec_tflops"), ".1f")),
    ("extra MB", 8, lambda r: _g(r.get("extra_mem_mb"), ".0f")),
)


def _g(value, fmt: str = ".3g") -> str:
    return "n/a" if value is None else format(value, fmt)


def format_header() -> str:
    return "  ".join(h.ljust(w) for h, w, _ in COLUMNS)


def format_row(row: dict) -> str:
    if "error" in row:
        return "  ".join(f(row).ljust(w) for _, w, f in COLUMNS[:3]) + "  ERROR " + row["error"].splitlines()[0][:80]
    return "  ".join(f(row).ljust(w) for _, w, f in COLUMNS)


# ------------------------------------------------------------------ run
def resolve_dtype(dtype, device) -> torch.dtype:
    """The dtype to run in: bfloat16 on a GPU, float32 on a CPU, unless named."""
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; valid: {', '.join(DTYPES)}")
    return DTYPES[dtype]


def run_benchmarks(*, device=None, dtype=None, quick: bool = False, out_dir: str | None = None,
                   shapes: list[Shape] | None = None, providers: list[str] | None = None,
                   repeats: int | None = None, whole_step: bool = False, whole_step_sizes=("S",),
                   verbose: bool = True, deadline: float | None = None, plan=None, what: str | None = None) -> dict:
    """Run the provider x shape x direction grid; returns the record and writes it unless ``out_dir`` is ''.

    ``out_dir`` None means results/kernels on a GPU and results/kernels/cpu on a CPU. Shapes not
    started by ``deadline`` (a time.monotonic() value) are listed as skipped. ``plan`` sets
    the fused kernel's tiles (a tile sweep's rerun)."""
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = resolve_dtype(dtype, device)
    names = list(providers or PROVIDERS)
    for name in names:
        PROVIDERS.canonical(name)  # an unknown one is refused with the valid names
    shapes = shapes or default_shapes(device.type, quick)
    warmup, default_repeats = KERNEL_REPEATS["cuda" if device.type == "cuda" else "cpu"]
    repeats = repeats or default_repeats
    peaks = goals.device_peaks(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
    if verbose:
        print(format_header(), flush=True)
    results, late, skipped, ran = [], [], {}, []
    for shape in shapes:
        if deadline is not None and time.monotonic() > deadline:
            late.append(shape.name)
            continue
        inp, refs = make_inputs(shape, device, dtype), {}
        for name in names:
            ok, reason = PROVIDERS[name].available(device, dtype, shape)
            if not ok:
                skipped.setdefault(name, {})[shape.name] = reason
                continue
            ran += [] if name in ran else [name]
            for row in measure_rows(name, shape, inp, refs, device, dtype, warmup, repeats, peaks, plan):
                results.append(row)
                if verbose:
                    print(format_row(row), flush=True)
        del inp, refs
        if device.type == "cuda":
            torch.cuda.empty_cache()
    record = records.new_record(
        "kernel_benchmark", device,
        op="moe_linear (Switch-DiT expert linear, arXiv 2403.09176)",
        dtype=str(dtype).replace("torch.", ""), quick=quick,
        triton_interpreter=device.type != "cuda" and "triton_fused" in ran,
        timing=describe(device, warmup, repeats),
        flops_definition="nominal 2*N*k*L*D_in*D_out per GEMM; 1 GEMM fwd, 3 fwd+bwd",
        bytes_definition="nominal: each input and output tensor read or written once",
        error_definition="max over the output (fwd+bwd: and every input gradient) of max|got - ref| / max|ref|, "
                         "ref = the per-sample loop (dense_linear: addmm) in float64 on the same inputs",
        memory_definition="torch.cuda.max_memory_allocated; extra = peak minus allocation before the call",
        device_peaks=peaks, shapes=[{"name": s.name, **asdict(s)} for s in shapes],
        providers={"ran": ran, "skipped": {name: _one_reason(by_shape) for name, by_shape in skipped.items()}},
        shapes_skipped_for_time=late, results=results)
    if whole_step:
        record["whole_step"] = whole_step_benchmarks(device, dtype, sizes=whole_step_sizes)
    # Speed goals are about the GPU; CPU timings (interpreter included) say nothing about them.
    record["goals"] = goals.evaluate_goals(record) if device.type == "cuda" else []
    record["step_goals"] = goals.step_goals(record.get("whole_step")) if device.type == "cuda" else []
    if out_dir != "":
        out_dir = out_dir or ("results/kernels" if device.type == "cuda" else "results/kernels/cpu")
        what = what or ("quick" if quick else None)
        record["path"] = str(records.write_record(record, out_dir, device, what))
    if verbose:
        _print_summary(record)
    return record


def _one_reason(by_shape: dict[str, str]) -> str:
    """A provider's skip reasons over shapes, each reason once with the shapes it covers."""
    reasons: dict[str, list[str]] = {}
    for shape, reason in by_shape.items():
        reasons.setdefault(reason, []).append(shape)
    if len(reasons) == 1:
        return next(iter(reasons))
    return "; ".join(f"{', '.join(shapes)}: {reason}" for reason, shapes in reasons.items())


def _print_summary(record: dict) -> None:
    for name, reason in record["providers"]["skipped"].items():
        print(f"skipped {name}: {reason}")
    if record["device_kind"] == "cpu":
        print("CPU timings (the fused kernel under the Triton interpreter) check that every provider runs and "
              "agrees with float64; they say nothing about GPU speed.")
    if record["goals"] or record["step_goals"]:
        print(goals.format_goals(record["goals"] + record["step_goals"]))
    if record.get("path"):
        print(f"[kernels] wrote {record['path']}")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmark kernels", description=__doc__.split("\n\n")[0],
        epilog="Without a GPU the fused kernel runs under the Triton interpreter (TRITON_INTERPRET=1 is set "
               "before the kernels are imported), by default in float32, at shapes the interpreter runs in seconds; "
               "such timings check that every provider runs and agrees with float64, not GPU speed.")
    p.add_argument("--quick", action="store_true",
                   help="small shapes: S and B at N=4, L=64 on a GPU; D=64, L=16, N=4 on a CPU (under a minute)")
    p.add_argument("--device", default=None, choices=["cuda", "cpu"], help="default: cuda if available")
    p.add_argument("--dtype", default=None, choices=list(DTYPES), help="default: bfloat16 on cuda, float32 on cpu")
    p.add_argument("--providers", default=None, help=f"comma list from {', '.join(PROVIDERS)} (default: all)")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed calls per row (default: 100 on cuda, 5 on cpu)")
    p.add_argument("--whole-step", action="store_true",
                   help="also time whole training steps of the S models (forward with aux losses + backward)")
    p.add_argument("--out", default=None,
                   help="directory for the JSON record (default: results/kernels, on a CPU results/kernels/cpu; "
                        "'' writes none)")
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    use_interpreter_without_gpu()
    if args.repeats is not None and args.repeats < 1:
        raise ValueError(f"--repeats must be >= 1, got {args.repeats}")
    run_benchmarks(device=args.device, dtype=args.dtype, quick=args.quick, out_dir=args.out,
                   providers=args.providers.split(",") if args.providers else None, repeats=args.repeats,
                   whole_step=args.whole_step)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
