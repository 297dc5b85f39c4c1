"""One-shot GPU acceptance check of the fused MoE expert linear (kernels/moe_triton.py).

Made for a short loan of one H100/H200 (must finish in < 5 minutes):

1. correctness of backend="triton" against a float64 reference (the grouped
   plain-torch evaluation of out[n] = sum_j g_j (x[n] @ W[e_j] + b[e_j]),
   arXiv 2403.09176 Sec. 3.2) at the real shapes: relative error
   ||got - ref|| / ||ref|| of the output and of every gradient; limits
   bf16 <= 1e-2, fp16 <= 5e-3, fp32 <= 1e-3 (tf32 dots); plus bitwise
   determinism of two runs; and `kernels.moe_mask` (the Switch-DiT block
   input, whose dx launch adds the mask gradient in its epilogue) in bf16 at XL;
2. the full microbenchmark (benchmark/speed/kernel_bench.py) in bf16, D=1152 / 32x256
   tokens first, then the other shapes;
3. whole training steps (forward with auxiliary losses + backward) of
   DiT-XL and Switch-DiT-XL when `methods` is importable and time is left,
   with the goal Switch-DiT / DiT <= 1.15;
4. a small tile sweep at D=1152, L=256 (reported as the table rows to use),
   and the XL fused numbers again with the best tiles when they beat the table.

Every section catches its own failures (tracebacks printed) so one broken part
does not lose the rest. Prints PASS/FAIL lines for correctness and for the
goals (conf/speed/goals.json), a compact table last, and writes the JSON record
to $OUT and to results/kernels/.

Needs torch and Triton only (plus `methods` for the whole steps, skipped without it):
nothing on its import path imports the harness's other dependencies.

Run: python -m benchmark.speed.gpu_check [--budget-s 280] [--skip-sweep]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import traceback

import torch

from kernels.moe_torch import moe_linear_grouped

from . import goals, records
from . import kernel_bench as kb
from .shapes import SEQS, SIZES, Shape, grid
from .steps import method_train_step, whole_step_benchmarks
from .timing import measure

REL_LIMITS = {torch.bfloat16: 1e-2, torch.float16: 5e-3, torch.float32: 1e-3}
TENSORS = ("out", "dx", "dweight", "dbias", "dgates")


def _log(msg: str) -> None:
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _grads(fn, inp: dict, dtype, x_dtype=None) -> list[torch.Tensor]:
    """[out, dx, dweight, dbias, dgates] with the inputs in ``dtype`` (x in ``x_dtype`` when given)."""
    x = inp["x"].detach().to(x_dtype or dtype).clone().requires_grad_(True)
    leaves = [x] + [inp[k].detach().to(dtype).clone().requires_grad_(True) for k in ("w", "b", "g")]
    out = fn(leaves[0], leaves[1], leaves[2], inp["idx"], leaves[3])
    out.backward(inp["dy"].to(out.dtype))
    return [out.detach()] + [t.grad for t in leaves]


def check_mask_correctness(device, deadline: float, dtype=torch.bfloat16, shapes=None) -> list[dict]:
    """`kernels.moe_mask` (x·(1 + moe_linear(x)), the Switch-DiT block input, with the dx epilogue)
    on the Triton backend against float64, at XL with a float32 x and ``dtype`` experts."""
    import kernels

    def ref_fn(x, w, b, idx, g):
        return x * (1 + moe_linear_grouped(x, w, b, idx, g))

    rows = []
    for shape in shapes or grid(("XL",), (256,)):
        if time.monotonic() > deadline:
            rows.append({"op": "moe_mask", "dtype": str(dtype), "shape": shape.name, "error": "skipped: time budget"})
            continue
        try:
            inp = kb.make_inputs(shape, device, dtype, seed=2)
            # x stays a float32 stream (float64 for the reference); the experts are in dtype.
            ref = _grads(ref_fn, inp, torch.float64)
            got = _grads(lambda *a: kernels.moe_mask(*a, backend="triton"), inp, dtype, x_dtype=torch.float32)
            for name, g, r in zip(TENSORS, got, ref):
                want = torch.float32 if name in ("out", "dx") else dtype
                rel = (g.double() - r).norm().item() / (r.norm().item() or 1.0)
                rows.append({"op": "moe_mask", "dtype": str(dtype).replace("torch.", ""), "shape": shape.name,
                             "tensor": name, "rel_err": rel, "limit": REL_LIMITS[dtype],
                             "passed": bool(rel <= REL_LIMITS[dtype] and g.dtype == want)})
            _log(f"moe_mask correctness {shape.name:<30} worst rel err "
                 f"{max(r['rel_err'] for r in rows[-len(TENSORS):]):.2e}")
            del inp, ref, got
        except Exception as exc:
            traceback.print_exc()
            rows.append({"op": "moe_mask", "dtype": str(dtype), "shape": shape.name,
                         "error": f"{type(exc).__name__}: {exc}", "passed": False})
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def check_correctness(device, deadline: float) -> list[dict]:
    """Relative errors of triton (and, for context, the torch path) vs float64."""
    import kernels

    triton_fn = lambda *a: kernels.moe_linear(*a, backend="triton")  # noqa: E731
    torch_fn = lambda *a: kernels.moe_linear(*a, backend="torch")  # noqa: E731
    # Most important first: the time budget may cut the tail of this list.
    plan = [(torch.bfloat16, "XL", 256), (torch.bfloat16, "XL", 256, "shared"), (torch.bfloat16, "S", 256),
            (torch.float32, "XL", 256), (torch.float16, "XL", 256)]
    plan += [(torch.bfloat16, s, seq) for s in SIZES for seq in SEQS if (s, seq) not in
             (("XL", 256), ("S", 256))]
    plan += [(dt, s, seq) for dt in (torch.float32, torch.float16) for s in ("S", "XL") for seq in SEQS
             if (s, seq) != ("XL", 256)]
    rows = []
    for item in plan:
        dtype, size, seq = item[:3]
        routing = item[3] if len(item) > 3 else "random"
        shape = Shape(size, SIZES[size], seq, routing=routing)
        if time.monotonic() > deadline:
            rows.append({"dtype": str(dtype), "shape": shape.name, "error": "skipped: time budget"})
            continue
        try:
            # Inputs are drawn in the test dtype, then upcast: the reference
            # sees exactly the values the kernel sees.
            inp = kb.make_inputs(shape, device, dtype, seed=1)
            ref = _grads(moe_linear_grouped, inp, torch.float64)
            got = _grads(triton_fn, inp, dtype)
            again = _grads(triton_fn, inp, dtype)
            plain = _grads(torch_fn, inp, dtype)
            deterministic = all(torch.equal(a, b) for a, b in zip(got, again))
            for name, g, p, r in zip(TENSORS, got, plain, ref):
                denom = r.norm().item() or 1.0
                rel = (g.double() - r).norm().item() / denom
                rel_torch = (p.double() - r).norm().item() / denom
                rows.append({"dtype": str(dtype).replace("torch.", ""), "shape": shape.name, "tensor": name,
                             "rel_err": rel, "rel_err_torch_path": rel_torch, "limit": REL_LIMITS[dtype],
                             "passed": bool(rel <= REL_LIMITS[dtype] and g.dtype == dtype),
                             "deterministic": deterministic})
            worst = max(r["rel_err"] for r in rows[-len(TENSORS):])
            _log(f"correctness {str(dtype):<15} {shape.name:<30} worst rel err {worst:.2e} "
                 f"deterministic={deterministic}")
            del inp, ref, got, again, plain
        except Exception as exc:
            traceback.print_exc()
            rows.append({"dtype": str(dtype), "shape": shape.name, "error": f"{type(exc).__name__}: {exc}",
                         "passed": False})
        torch.cuda.empty_cache()
    return rows


# Sweep candidates: all compile without register spills for sm_90 at D=1152
# (benchmark/speed/compile_check.py with these tiles).
MM_CANDIDATES = [  # (BM, BN, BK, warps, stages, swap_ab)
    (128, 128, 64, 8, 3, True), (128, 128, 64, 8, 3, False), (128, 64, 64, 4, 4, True),
    (128, 64, 64, 4, 4, False), (256, 128, 64, 8, 3, True), (256, 128, 64, 8, 3, False),
    (128, 256, 64, 8, 3, True), (128, 128, 32, 4, 4, True),
]
GRAD_CANDIDATES = [  # (BI, BO, BL, warps, stages, split or None for automatic)
    (128, 128, 64, 8, 3, None), (128, 128, 64, 8, 3, 2), (128, 128, 32, 8, 3, None),
    (128, 128, 64, 8, 2, None), (128, 64, 64, 8, 3, None), (128, 64, 64, 4, 3, None),
    (64, 128, 64, 4, 3, None), (64, 64, 64, 4, 3, None),
]


def tile_sweep(device, deadline: float, mm_candidates=None, grad_candidates=None) -> dict:
    """Time forward, dx and the expert-gradient kernel over a few tile configs at XL."""
    mm_candidates = MM_CANDIDATES if mm_candidates is None else mm_candidates
    grad_candidates = GRAD_CANDIDATES if grad_candidates is None else grad_candidates
    from kernels import moe_triton as mt

    shape = Shape("XL", SIZES["XL"], 256)
    inp = kb.make_inputs(shape, device, torch.bfloat16)
    x, w, b, idx, g, dy = (inp[k] for k in ("x", "w", "b", "idx", "g", "dy"))
    timer = lambda fn: measure(fn, device, warmup=5, repeats=25).median_ms  # noqa: E731
    out = {"shape": shape.name, "mm": [], "grad": []}
    default_mm = mt.mm_tiles(shape.seq, shape.d, shape.d)
    default_dx = mt.mm_tiles(shape.seq, shape.d, shape.d, transpose_w=True)
    default_grad = mt.grad_tiles(shape.seq, shape.d, shape.d)
    out["default_mm"], out["default_dx"], out["default_grad"] = repr(default_mm), repr(default_dx), repr(default_grad)
    for cand in mm_candidates:
        if time.monotonic() > deadline:
            break
        plan = mt.TilePlan(mm=mt.MMTiles(*cand))
        row = {"tiles": repr(plan.mm)}
        try:
            row["fwd_ms"] = timer(lambda: mt.launch_mixed(x, w, b, idx, g, transpose_w=False, plan=plan))
            row["dx_ms"] = timer(lambda: mt.launch_mixed(dy, w, None, idx, g, transpose_w=True, plan=plan))
        except Exception as exc:
            row["error"] = f"{type(exc).__name__}: {exc}"[:300]
        out["mm"].append(row)
        _log(f"sweep mm   {row}")
    for cand in grad_candidates:
        if time.monotonic() > deadline:
            break
        plan = mt.TilePlan(grad=mt.GradTiles(*cand[:5]), split=cand[5])
        row = {"tiles": repr(plan.grad), "split": cand[5]}
        try:
            row["dparams_ms"] = timer(lambda: mt.launch_expert_grads(x, dy, w, b, idx, g, plan))
        except Exception as exc:
            row["error"] = f"{type(exc).__name__}: {exc}"[:300]
        out["grad"].append(row)
        _log(f"sweep grad {row}")
    ok_mm = [r for r in out["mm"] if "fwd_ms" in r]
    ok_grad = [r for r in out["grad"] if "dparams_ms" in r]
    if ok_mm:
        # The forward and dx launches take their tiles from separate table rows.
        for key, field in (("mm", "fwd_ms"), ("dx", "dx_ms")):
            best = min(ok_mm, key=lambda r: r[field])
            out[f"best_{key}"] = best
            out[f"best_{key}_index"] = out["mm"].index(best)
    if ok_grad:
        best = min(ok_grad, key=lambda r: r["dparams_ms"])
        out["best_grad"] = best
        out["best_grad_index"] = out["grad"].index(best)
    return out


def tuned_rerun(device, sweep: dict, deadline: float) -> dict | None:
    """Fused-kernel XL numbers with the sweep's best tiles (when not the table's)."""
    from kernels import moe_triton as mt

    if any(f"best_{k}_index" not in sweep for k in ("mm", "dx", "grad")) or time.monotonic() > deadline:
        return None
    mm = mt.MMTiles(*MM_CANDIDATES[sweep["best_mm_index"]])
    dx = mt.MMTiles(*MM_CANDIDATES[sweep["best_dx_index"]])
    gc = GRAD_CANDIDATES[sweep["best_grad_index"]]
    grad, split = mt.GradTiles(*gc[:5]), gc[5]
    if (repr(mm), repr(dx), repr(grad), split) == (sweep["default_mm"], sweep["default_dx"], sweep["default_grad"], None):
        return {"note": "table tiles were already the best swept", "goals": []}
    rec = kb.run_benchmarks(device=device, dtype=torch.bfloat16, shapes=grid(("XL",), (256,)), out_dir="",
                            providers=["triton_fused"], verbose=False, deadline=deadline,
                            plan=mt.TilePlan(mm=mm, dx=dx, grad=grad, split=split))
    return {"mm": repr(mm), "dx": repr(dx), "grad": repr(grad), "split": split, "results": rec["results"]}


def _merge_tuned_goals(record: dict, tuned: dict | None) -> list[dict]:
    """Goals recomputed with the tuned fused numbers in place of the table's."""
    if not tuned or "results" not in tuned:
        return []
    results = [r for r in record["results"] if r["provider"] != "triton_fused"] + tuned["results"]
    names = sorted({r["shape"] for r in tuned["results"]})
    return goals.evaluate_goals({**record, "results": results}, shape_names=names)


def _compact_table(record: dict, correctness: list[dict], sweep: dict | None, tuned_goals: list[dict]) -> str:
    lines = ["", "=" * 30 + " SUMMARY " + "=" * 30]
    hw, ver = record.get("hardware", {}), record.get("versions", {})
    lines.append(f"device: {hw.get('name')}  torch {ver.get('torch')}  triton {ver.get('triton')}  "
                 f"cuda {ver.get('cuda')}  commit {record.get('git_commit')}")
    by_dtype: dict[str, list[dict]] = {}
    for r in correctness:  # moe_linear rows by dtype, then moe_mask's
        by_dtype.setdefault(r["dtype"] if "op" not in r else f"{r['op']} {r['dtype']}", []).append(r)
    for dt, rows in by_dtype.items():
        errs = [r for r in rows if "error" in r]
        good = [r for r in rows if "rel_err" in r]
        worst = max(good, key=lambda r: r["rel_err"] / r["limit"]) if good else None
        passed = not errs and all(r["passed"] for r in good) and all(r.get("deterministic", True) for r in good)
        torch_path = (f"; torch path {worst['rel_err_torch_path']:.2e}" if worst and "rel_err_torch_path" in worst
                      else "")
        detail = (f"worst {worst['rel_err']:.2e} ({worst['tensor']} @ {worst['shape']}, limit {worst['limit']:.0e}"
                  f"{torch_path})") if worst else "no result"
        lines.append(f"CORRECTNESS {'PASS' if passed else 'FAIL'} {dt:<9} {len(good)} checks, {len(errs)} errors, {detail}")
    xl = [r for r in record.get("results", []) if r["shape"].startswith("XL-D1152-L256")]
    if xl:
        head = f"{'provider':<13} {'shape':<28} {'dir':<8} {'ms':>8} {'TFLOP/s':>8} {'%meas':>6} {'extraMB':>8}"
        lines += ["", head, "-" * len(head)]
        for r in xl:
            if "median_ms" not in r:
                lines.append(f"{r['provider']:<13} {r['shape']:<28} {r['direction']:<8} ERROR {r.get('error', '')[:50]}")
                continue
            pct = r.get("pct_measured_tflops") or r.get("pct_spec_tflops") or 0.0
            extra = r.get("extra_mem_mb")
            lines.append(f"{r['provider']:<13} {r['shape']:<28} {r['direction']:<8} {r['median_ms']:>8.3f} "
                         f"{r['tflops']:>8.1f} {pct:>6.1f} {'-' if extra is None else str(round(extra)):>8}")
    host = (record.get("host_overhead") or {}).get("rows", [])
    if host:
        lines.append("\nhost time per fwd+bwd call vs the timer's (GPU idles when host > GPU):")
        for r in host:
            timed = "-" if r.get("timed_ms") is None else f"{1e3 * r['timed_ms']:.0f}"
            lines.append(f"  {r['path']:<13} {r['shape']:<28} host {r['host_us_per_call']:7.0f} us  "
                         f"wall {r['wall_us_per_call']:7.0f} us  timed {timed:>6} us")
    for key in ("whole_step", "step_variants"):
        for r in (record.get(key) or {}).get("rows", []):
            lines.append(f"step {r['method']}-{r['size']} {r.get('options') or ''} "
                         f"{r.get('median_ms', float('nan')):.1f} ms {r.get('error', '')}")
    if sweep:
        if "best_mm" in sweep:
            lines.append(f"\nsweep best fwd tiles : {sweep['best_mm']}  (table: {sweep['default_mm']})")
        if "best_dx" in sweep:
            lines.append(f"sweep best dx tiles  : {sweep['best_dx']}  (table: {sweep.get('default_dx')})")
        if "best_grad" in sweep:
            lines.append(f"sweep best grad tiles: {sweep['best_grad']}  (table: {sweep['default_grad']})")
    lines.append("")
    lines.append(goals.format_goals(record.get("goals", [])) or "GOAL ? no goals evaluated")
    if record.get("step_goals"):
        lines.append(goals.format_goals(record["step_goals"]))
    if tuned_goals:
        lines.append("with the sweep's best tiles:")
        lines.append(goals.format_goals(tuned_goals))
    return "\n".join(lines)


def write_record(record: dict, device, what: str, quiet: bool = False) -> None:
    """Write a GPU record to $OUT (what comes back from a lent machine) and to results/kernels/;
    a failed write is printed, never fatal (the other copy and the printed summary remain)."""
    for out_dir in (os.environ.get("OUT"), "results/kernels"):
        if not out_dir:
            continue
        try:
            path = records.write_record(record, out_dir, device, what)
            if not quiet:
                _log(f"wrote {path}")
        except Exception:
            traceback.print_exc()


def _profiling(device) -> tuple:
    """(synchronize, profiler activities) for `device`: CUDA adds a device sync and GPU kernel times."""
    from torch.profiler import ProfilerActivity

    if device.type == "cuda":
        return (lambda: torch.cuda.synchronize(device)), [ProfilerActivity.CPU, ProfilerActivity.CUDA]
    return (lambda: None), [ProfilerActivity.CPU]


def host_overhead(device, calls: int = 40, shapes=None, dtype=torch.bfloat16, profile_calls: int = 20) -> dict:
    """Host time per forward+backward call against the time the shared timer reports.

    A call whose host time exceeds its GPU time leaves the GPU idle between
    calls, so the timer then measures the Python/dispatch path, not the kernels.
    Compared: the fused op's eager path (autograd.Function), the same kernels
    through the torch.library custom op (the torch.compile path), and the
    dense nn.Linear reference; at XL/L=256 and B/L=64 (the smallest work).
    `calls` stays under the CUDA launch queue so the host never blocks on it.
    """
    from torch.profiler import profile

    from kernels import moe_triton as mt

    paths = {"triton_fused": lambda inp: kb.build("triton_fused", inp),
             "custom_op": lambda inp: kb.moe_call(mt.moe_linear_fused, inp),
             "dense_linear": kb.dense_call}
    cuda = device.type == "cuda"
    sync, activities = _profiling(device)
    shapes = shapes or [Shape("XL", SIZES["XL"], 256), Shape("B", SIZES["B"], 64)]
    rows, tables = [], {}
    for shape in shapes:
        inp = kb.make_inputs(shape, device, dtype)
        for name, build in paths.items():
            call, leaves, dy = build(inp)

            def fwd_bwd():
                call().backward(dy)
                for t in leaves:
                    t.grad = None

            fwd_bwd()
            sync()
            t0 = time.perf_counter()
            for _ in range(calls):
                fwd_bwd()
            host = time.perf_counter() - t0
            sync()
            wall = time.perf_counter() - t0
            row = {"shape": shape.name, "path": name, "host_us_per_call": 1e6 * host / calls,
                   "wall_us_per_call": 1e6 * wall / calls,
                   "timed_ms": measure(fwd_bwd, device, warmup=10, repeats=100, clear=leaves).median_ms
                   if cuda else None}
            rows.append(row)
            _log(f"host overhead {row}")
            if name == "triton_fused" and shape is shapes[-1]:
                with profile(activities=activities) as prof:
                    for _ in range(profile_calls):
                        fwd_bwd()
                    sync()
                tables[shape.name] = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20,
                                                               max_name_column_width=60)
                print(f"--- host profile, {profile_calls} fused fwd+bwd at {shape.name} ---\n{tables[shape.name]}", flush=True)
        del inp
        if cuda:
            torch.cuda.empty_cache()
    return {"calls": calls, "rows": rows, "profiles": tables}


def profile_steps(device, dtype, size: str = "XL", steps: int = 3, batch: int = 32,
                  input_size: int = 32) -> dict:
    """torch.profiler's top GPU kernels over a few whole steps of DiT and Switch-DiT: where the
    step-time gap between them goes (text tables, printed and kept in the record)."""
    from torch.profiler import profile

    cuda = device.type == "cuda"
    sync, activities = _profiling(device)
    keys = ("self_device_time_total", "self_cuda_time_total") if cuda else ("self_cpu_time_total",)
    out = {}
    for method in ("dit", "switch_dit"):
        step, params = method_train_step(method, size, device, dtype, batch, input_size)
        step()
        sync()
        with profile(activities=activities) as prof:
            for _ in range(steps):
                step()
                for p in params:
                    p.grad = None
            sync()
        events = prof.key_averages()
        for key in keys:
            try:
                out[method] = events.table(sort_by=key, row_limit=25, max_name_column_width=70)
                break
            except Exception:
                continue
        out[f"{method}_steps"] = steps
        del step, params
        if cuda:
            torch.cuda.empty_cache()
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmark.speed.gpu_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget-s", type=float, default=280.0, help="stop optional work after this many seconds")
    parser.add_argument("--skip-sweep", action="store_true")
    args = parser.parse_args(argv)
    start = time.monotonic()
    deadline = lambda frac: start + frac * args.budget_s  # noqa: E731
    if not torch.cuda.is_available():
        print("gpu_check needs a CUDA device; none is visible", file=sys.stderr)
        return 2
    device = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = False  # the float64/fp32 references must not use tf32
    _log(f"device {torch.cuda.get_device_name(device)}, torch {torch.__version__}")

    correctness: list[dict] = []
    try:
        correctness = check_correctness(device, deadline(0.33))
        correctness += check_mask_correctness(device, deadline(0.36))
    except Exception:
        traceback.print_exc()

    record = records.new_record("kernel_gpu_check", device)
    try:
        order = ["XL", "L", "B", "S"]
        bench = kb.run_benchmarks(device=device, dtype=torch.bfloat16, shapes=grid(order), out_dir="",
                                  verbose=True, deadline=deadline(0.65))
        record.update({k: v for k, v in bench.items() if k != "kind"})
    except Exception:
        traceback.print_exc()
        record.update(results=[], goals=[], error=traceback.format_exc())

    if time.monotonic() < deadline(0.68):
        try:
            record["host_overhead"] = host_overhead(device)
        except Exception:
            traceback.print_exc()

    # The step goal before the (optional) tile sweep: it is one of the four bars.
    if time.monotonic() < deadline(0.75):
        try:
            # The step goal is named at XL; DiT and Switch-DiT only, to fit the loan.
            record["whole_step"] = whole_step_benchmarks(device, torch.bfloat16, sizes=("XL",),
                                                         methods=("dit", "switch_dit"))
            record["step_goals"] = goals.step_goals(record["whole_step"])
            _log(f"whole step {record['whole_step']['rows']}")
        except Exception:
            traceback.print_exc()
    # Context for the step goal: the same Switch-DiT step on the plain-torch expert path,
    # and the profiler's top kernels of both models.
    if time.monotonic() < deadline(0.8):
        try:
            record["step_variants"] = whole_step_benchmarks(
                device, torch.bfloat16, sizes=("XL",), methods=("switch_dit",),
                options={"switch_dit": {"moe_backend": "torch"}})
            _log(f"step variants {record['step_variants']['rows']}")
            record["step_profile"] = profile_steps(device, torch.bfloat16)
            for method in ("dit", "switch_dit"):
                print(f"--- profile {method}-XL, {record['step_profile'].get(method + '_steps')} steps ---\n"
                      f"{record['step_profile'].get(method, '')}", flush=True)
        except Exception:
            traceback.print_exc()

    sweep, tuned = None, None
    if not args.skip_sweep:
        try:
            sweep = tile_sweep(device, deadline(0.92))
            tuned = tuned_rerun(device, sweep, deadline(0.95))
        except Exception:
            traceback.print_exc()
    tuned_goals = _merge_tuned_goals(record, tuned)

    record.update(kind="kernel_gpu_check", correctness=correctness, tile_sweep=sweep, tuned=tuned,
                  tuned_goals=tuned_goals, wall_s=time.monotonic() - start)
    write_record(record, device, "gpu-check")
    print(_compact_table(record, correctness, sweep, tuned_goals), flush=True)
    ok = correctness and all(r.get("passed") for r in correctness)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
