"""Kernels for the benchmark suite, importable with torch and Triton alone.

`moe_linear` is the Switch-DiT expert linear (arXiv 2403.09176, Sec. 3.2):
a plain-torch path (kernels/moe_torch.py) and a fused Triton grouped GEMM
(kernels/moe_triton.py) behind one signature; benchmark/speed/kernel_bench.py
times them against the official formulation and a dense linear. `moe_mask` is the block
input x·(1 + moe_linear(x)) built on it (kernels/moe_mask.py).
"""
from .moe import BACKENDS, VALID_BACKENDS, moe_linear, resolve_backend
from .moe_mask import apply_mask, moe_mask
from .moe_torch import moe_linear_grouped, moe_linear_mixed, moe_linear_torch
from .moe_validate import validate_moe_inputs

__all__ = [
    "BACKENDS",
    "VALID_BACKENDS",
    "apply_mask",
    "moe_linear",
    "moe_linear_grouped",
    "moe_linear_mixed",
    "moe_linear_torch",
    "moe_mask",
    "resolve_backend",
    "validate_moe_inputs",
]
