"""Count the elementwise passes over the activations in one training step of each method.

    python -m benchmark.speed.passes [--methods dit dtr switch_dit] [--size S] [--dtype bf16]
                                     [--option moe_backend=triton]

A pass is one elementwise aten op (products, sums, casts, copies) that reads or
writes a tensor of the block activation's size N·L·D, in the forward or the
backward.  Matrix products, attention and layer norms are not passes; they are
the same for all three methods.  Routed blocks (DTR, Switch-DiT) add passes
for their channel mask m; on a GPU these are memory-bound kernels, so their
number per block over DiT is a device-independent measure of the routing's
overhead beside the expert GEMMs.

On a CPU, ``moe_backend=triton`` needs TRITON_INTERPRET=1 in the environment
(``TRITON_INTERPRET=1 python -m benchmark.speed.passes --option moe_backend=triton``);
kernel launches are not aten ops, so they are not counted.
"""
from __future__ import annotations

import argparse
import collections
import sys
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

ELEMENTWISE = frozenset({"add", "add_", "addcmul", "addcmul_", "sub", "sub_", "mul", "mul_", "neg", "div",
                         "where", "_to_copy", "copy_", "clone"})


class _PassCounter(TorchDispatchMode):
    """Counts elementwise aten ops with an argument of exactly ``numel`` elements."""

    def __init__(self, numel: int):
        super().__init__()
        self.numel = numel
        self.counts: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.__name__.split(".")[0]
        if name in ELEMENTWISE:
            tensors = [a for a in (*args, *(kwargs or {}).values()) if isinstance(a, torch.Tensor)]
            if any(t.numel() == self.numel for t in tensors):
                self.counts[name] += 1
        return func(*args, **(kwargs or {}))


def step_passes(method: str, size: str = "S", *, batch: int = 4, input_size: int = 16, dtype: str = "bf16",
                device: str = "cpu", **options: Any) -> tuple[collections.Counter, int]:
    """(passes by op name, depth) of one training step (forward with auxiliary losses + backward).

    Timesteps differ across the batch, so Switch-DiT takes its per-sample (training) path.
    """
    from methods import build_model

    torch.manual_seed(0)
    model = build_model(method, size, input_size=input_size, num_classes=10, **options).to(device).train()
    n_tokens = (input_size // model.patch_size) ** 2
    x = torch.randn(batch, model.in_channels, input_size, input_size, device=device)
    t = torch.linspace(0, 999, batch, device=device).long()
    y = torch.arange(batch, device=device) % 10
    autocast = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(dtype)
    counter = _PassCounter(batch * n_tokens * model.hidden_size)
    with counter:
        with torch.autocast(device, dtype=autocast, enabled=autocast is not None):
            out, aux = model(x, t, y, return_aux=True)
        loss = out.float().square().mean() + sum(aux.values(), torch.zeros((), device=device))
        loss.backward()
    return counter.counts, model.depth


def table(methods: list[str], size: str, dtype: str, options: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per method: passes per step and per block over DiT's."""
    from methods import METHODS

    rows, base = [], None
    for method in ["dit", *[m for m in methods if m != "dit"]]:
        opts = {k: v for k, v in options.items() if k in METHODS[method].options}
        counts, depth = step_passes(method, size, dtype=dtype, **opts)
        total = sum(counts.values())
        base = total if method == "dit" else base
        rows.append({"method": method, "options": opts, "passes": total, "per_block_over_dit": (total - base) / depth,
                     "by_op": dict(sorted(counts.items()))})
    return rows


def main(argv: list[str] | None = None) -> int:
    from methods import METHODS, SIZES

    from .method_bench import parse_option

    p = argparse.ArgumentParser(prog="python -m benchmark.speed.passes", description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--size", default="S", choices=list(SIZES))
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"], help="autocast dtype")
    p.add_argument("--option", action="append", default=[], metavar="NAME=VALUE", help="method option, e.g. moe_backend=triton")
    args = p.parse_args(argv)
    options = dict(parse_option(text, p) for text in args.option)
    for row in table(args.methods, args.size, args.dtype, options):
        opts = ",".join(f"{k}={v}" for k, v in row["options"].items())
        print(f"{row['method']:<11} {opts:<20} passes/step {row['passes']:>4}  per block over DiT "
              f"{row['per_block_over_dit']:+5.1f}  {row['by_op']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
