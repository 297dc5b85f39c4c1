"""Follow-up GPU probe of the whole-step goal and the expert-gradient kernel's tiles.

The step goal (Switch-DiT-XL training step / DiT-XL's, 32 samples of 256 px per GPU,
bf16 autocast; conf/speed/goals.json) is measured by `benchmark.speed.gpu_check`. Where
both eager steps are partly host-bound (the profiler's host time per step close to the
step time), this probe separates the parts:

1. the eager XL steps at batch 32 twice (run-to-run spread) and at batch 64
   (twice the GPU work for the same host work: closer to the GPU-bound ratio);
2. both XL steps under torch.compile (Switch-DiT's expert layer stays the
   opaque custom op; inductor fuses the elementwise mask work), time allowing;
3. the expert-gradient kernel over tiles beyond gpu_check's list (all compile
   without register spills for sm_90 at D=1152).

Writes one JSON (`$OUT` and results/kernels/) and prints a summary.
Run: python -m benchmark.speed.step_probe [--budget-s 240]
"""
from __future__ import annotations

import argparse
import sys
import time
import traceback

import torch

from . import records
from .gpu_check import _log, tile_sweep, write_record
from .steps import whole_step_benchmarks

# (BI, BO, BL, warps, stages, split): the table's XL row first, then tiles gpu_check's list lacks.
EXTRA_GRAD_CANDIDATES = [
    (128, 64, 64, 4, 3, None), (64, 128, 64, 4, 3, None), (64, 128, 128, 4, 3, None), (128, 64, 64, 4, 4, None),
    (64, 128, 64, 4, 4, None), (64, 64, 128, 4, 3, None), (128, 128, 64, 8, 4, None), (64, 256, 64, 8, 3, None),
    (256, 64, 64, 8, 3, None), (128, 64, 128, 8, 3, None),
]


def ratios(rows: list[dict]) -> list[dict]:
    """Switch-DiT / DiT per (batch, compiled, repeat) where both ran."""
    by: dict[tuple, dict[str, float]] = {}
    for r in rows:
        if "median_ms" in r:
            key = (r["batch"], bool(r.get("compiled")), r.get("repeat", 0))
            by.setdefault(key, {})[r["method"]] = r["median_ms"]
    return [{"batch": b, "compiled": c, "repeat": rep, "dit_ms": m["dit"], "switch_dit_ms": m["switch_dit"],
             "ratio": m["switch_dit"] / m["dit"]}
            for (b, c, rep), m in sorted(by.items()) if {"dit", "switch_dit"} <= set(m)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmark.speed.step_probe", description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget-s", type=float, default=240.0)
    parser.add_argument("--size", default="XL")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("step_probe needs a CUDA device; none is visible", file=sys.stderr)
        return 2
    start = time.monotonic()
    left = lambda: args.budget_s - (time.monotonic() - start)  # noqa: E731
    device, dtype = torch.device("cuda"), torch.bfloat16
    record = records.new_record("step_probe", device, size=args.size, rows=[])

    def save():  # after every section: a run cut short still leaves its record
        record["ratios"] = ratios(record["rows"])
        record["wall_s"] = time.monotonic() - start
        write_record(record, device, "step-probe", quiet=True)

    # The compiled pair last: compiling two XL models takes minutes.
    plan = [(32, False, 0), (64, False, 0), (32, False, 1), "sweep", (32, True, 0)]
    for item in plan:
        if item == "sweep":
            try:
                if left() > 20:
                    record["grad_sweep"] = tile_sweep(device, time.monotonic() + min(left() - 10, 40),
                                                      mm_candidates=[], grad_candidates=EXTRA_GRAD_CANDIDATES)
            except Exception:
                traceback.print_exc()
            save()
            continue
        batch, compiled, repeat = item
        if left() < (150 if compiled else 30):
            record.setdefault("skipped", []).append({"batch": batch, "compiled": compiled, "reason": "time budget"})
            continue
        try:
            t0 = time.monotonic()
            whole = whole_step_benchmarks(device, dtype, sizes=(args.size,), methods=("dit", "switch_dit"),
                                                batch=batch, compile=compiled)
            for r in whole["rows"]:
                r["repeat"] = repeat
                r["section_s"] = time.monotonic() - t0
            record["rows"] += whole["rows"]
            _log(f"steps batch={batch} compiled={compiled}: {whole['rows']}")
        except Exception:
            traceback.print_exc()
        save()
    _log("wrote the step-probe record")
    print("\n=== STEP PROBE ===")
    for r in record["ratios"]:
        print(f"batch {r['batch']:>3} {'compiled' if r['compiled'] else 'eager   '} repeat {r['repeat']}: "
              f"DiT {r['dit_ms']:.1f} ms  Switch-DiT {r['switch_dit_ms']:.1f} ms  ratio {r['ratio']:.3f}")
    for r in (record.get("grad_sweep") or {}).get("grad", []):
        print(f"grad {r['tiles']} {r.get('dparams_ms', r.get('error'))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
