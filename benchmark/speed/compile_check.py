"""Compile the MoE kernels for an NVIDIA target without a GPU and report resources.

Triton's compiler (and the ptxas it ships) runs on the CPU; only loading the
binary needs a device. This builds each launch of kernels/moe_triton.py
exactly as the runtime would at the real Switch-DiT shapes (benchmark/speed/shapes.py;
arXiv 2403.09176: D = 384 ... 1152, L = 256, N = 32, E = 3, k = 2), specialises the
arguments the way the JIT does (16-byte alignment and divisibility, ints equal
to 1 as constants), compiles for sm_90 (H100/H200) and reads registers, spill
stack and shared memory from the cubin. That catches GPU-only compile errors
and register spills in CI, where no GPU exists.

It relies on Triton internals (ASTSource, the native argument specialiser and
the bundled cuobjdump); `available()` says whether they are present.
Must run in a process where TRITON_INTERPRET is not set (the kernels must be
real JIT functions): `python -m benchmark.speed.compile_check [--sizes S,XL] [--json]`.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

import torch

from .shapes import NUM_EXPERTS, NUM_SAMPLES, SIZES, TOP_K


def _cuobjdump() -> str | None:
    import triton

    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    return path if os.path.exists(path) else None


def available() -> tuple[bool, str]:
    """(usable, reason) for offline compilation in this process."""
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        return False, "TRITON_INTERPRET=1 is set: kernels are interpreted, not compiled"
    try:
        from triton._C.libtriton import native_specialize_impl  # noqa: F401
        from triton.backends.compiler import GPUTarget  # noqa: F401
        from triton.compiler import ASTSource  # noqa: F401
    except Exception as exc:
        return False, f"this Triton lacks the internals used here: {exc!r}"
    if _cuobjdump() is None:
        return False, "Triton's bundled cuobjdump is missing"
    return True, ""


def compile_spec(spec, capability: int = 90) -> dict:
    """Compile one LaunchSpec for sm_<capability>; return its resource usage."""
    import triton
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.compiler import BaseBackend, GPUTarget
    from triton.compiler import ASTSource

    fn = spec.kernel
    options = {k: spec.meta[k] for k in ("num_warps", "num_stages")}
    values = dict(zip([p.name for p in fn.params], spec.args))
    values.update({k: v for k, v in spec.meta.items() if k not in options})
    signature, constexprs, attrs = {}, {}, {}
    for i, p in enumerate(fn.params):
        value = values[p.name]
        if p.is_constexpr:
            signature[p.name], constexprs[(i,)] = "constexpr", value
            continue
        # Same call the JIT makes at launch: (type, "D" if 16-divisible/aligned) or ("constexpr", 1).
        ty, key = native_specialize_impl(BaseBackend, value, False, True, True)
        if ty == "constexpr":
            signature[p.name], constexprs[(i,)] = "constexpr", key
        else:
            signature[p.name] = ty
            attrs[(i,)] = BaseBackend.parse_attr(key) if key else []
    kernel = triton.compile(ASTSource(fn, signature, constexprs, attrs),
                            target=GPUTarget("cuda", capability, 32), options=options)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.cubin")
        with open(path, "wb") as fh:
            fh.write(kernel.asm["cubin"])
        usage = subprocess.run([_cuobjdump(), "--dump-resource-usage", path],
                               capture_output=True, text=True, check=True).stdout
    fields = dict(re.findall(r"(REG|STACK|LOCAL):(\d+)", usage))
    ttgir = kernel.asm["ttgir"]
    return {
        "registers": int(fields.get("REG", -1)),
        "stack_bytes": int(fields.get("STACK", -1)),  # > 0 means spilled registers
        "local_bytes": int(fields.get("LOCAL", -1)),
        "shared_bytes": int(kernel.metadata.shared),
        "async_copies": ttgir.count("async_copy_global_to_local") + ttgir.count("async_tma_copy"),
        "wgmma": ttgir.count("warp_group_dot "),
        **options,
    }


def real_specs(d: int, seq: int = 256, n: int = NUM_SAMPLES, e: int = NUM_EXPERTS, k: int = TOP_K,
               dtype=torch.bfloat16) -> dict:
    """LaunchSpecs of forward, dx (plain and moe_mask's) and the expert-gradient kernel on empty CPU tensors."""
    from kernels import moe_triton as mt

    x = torch.empty(n, seq, d, dtype=dtype)
    w = torch.empty(e, d, d, dtype=dtype)
    b = torch.empty(e, d, dtype=dtype)
    idx = torch.zeros(n, k, dtype=torch.int64)
    g = torch.empty(n, k, dtype=dtype)
    out = torch.empty(n, seq, d, dtype=dtype)
    # The GPU table, not the CPU one: pretend to be on an H100 (132 SMs) for the split.
    t, tiles, _ = mt.grad_plan(x, w)
    split = max(1, min(n, -(-132 // (tiles * e))))
    bufs = mt.grad_buffers(x, w, idx, tiles, split)
    order = mt.expert_order(idx)
    col = torch.empty(n, d, dtype=torch.float32)
    # kernels.moe_mask's dx: float32 out, plus g·(1 + δ) read in the epilogue (float32 g, δ in dtype).
    x32 = torch.empty(n, seq, d, dtype=torch.float32)
    return {
        "forward": mt.mixed_linear_spec(x, w, b, idx, g, out, transpose_w=False),
        "dx": mt.mixed_linear_spec(out, w, None, idx, g, x, transpose_w=True),
        "dx_mask": mt.mixed_linear_spec(out, w, None, idx, g, x32, transpose_w=True, res=x32, rmul=out),
        "dparams": mt.expert_grad_spec(x, out, w, b, g, idx, order, col, *bufs, t, tiles, split),
    }


def run(sizes=("XL",), seq: int = 256, capability: int = 90, dtype=torch.bfloat16) -> list[dict]:
    rows = []
    for size in sizes:
        for name, spec in real_specs(SIZES[size], seq=seq, dtype=dtype).items():
            row = {"size": size, "seq": seq, "dtype": str(dtype).replace("torch.", ""), "kernel": name,
                   "tiles": {k: v for k, v in spec.meta.items() if k.startswith("BLOCK") or k == "SWAP_AB"}}
            try:
                row.update(compile_spec(spec, capability))
            except Exception as exc:
                row["error"] = f"{type(exc).__name__}: {exc}"
            rows.append(row)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmark.speed.compile_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="S,XL", help=f"comma list from {list(SIZES)}")
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--capability", type=int, default=90)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--json", action="store_true", help="print one JSON list instead of a table")
    args = parser.parse_args(argv)
    ok, reason = available()
    if not ok:
        print(f"compile check unavailable: {reason}", file=sys.stderr)
        return 2
    sizes = [s for s in args.sizes.split(",") if s]
    bad = [s for s in sizes if s not in SIZES]
    if bad:
        parser.error(f"unknown sizes {bad}; valid: {list(SIZES)}")
    rows = run(sizes, seq=args.seq, capability=args.capability, dtype=getattr(torch, args.dtype))
    if args.json:
        print(json.dumps(rows))
    else:
        for r in rows:
            status = r.get("error") or (f"regs {r['registers']:>3}  spill stack {r['stack_bytes']:>4} B  "
                                        f"smem {r['shared_bytes'] // 1024:>3} KiB  async copies {r['async_copies']}")
            print(f"{r['size']:<3} L={r['seq']:<4} {r['dtype']:<9} {r['kernel']:<8} {status}")
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
