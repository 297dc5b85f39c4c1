"""`moe_linear`: the Switch-DiT expert linear behind one signature, several backends.

    out[n] = sum_j gates[n, j] * (x[n] @ weight[expert_idx[n, j]] + bias[expert_idx[n, j]])

(Park et al. 2024, arXiv 2403.09176, Sec. 3.2: timestep-gated sparse MoE, one
routing decision per sample). Backends are a table: "torch" is the plain path
in kernels/moe_torch.py, "triton" the fused kernel in kernels/moe_triton.py,
"auto" picks triton for CUDA tensors and torch elsewhere.
"""
from __future__ import annotations

from typing import Callable

import torch

from .moe_torch import moe_linear_torch
from .moe_validate import validate_moe_inputs
from .registry import Registry


def _triton_backend(x, weight, bias, expert_idx, gates):
    # Imported on first use so `import kernels` stays cheap and the torch path
    # works even where Triton cannot compile.
    from .moe_triton import moe_linear_triton

    return moe_linear_triton(x, weight, bias, expert_idx, gates)


BACKENDS: Registry[Callable] = Registry("MoE backend", {"torch": moe_linear_torch, "triton": _triton_backend})
VALID_BACKENDS = ("auto", *BACKENDS)


def resolve_backend(backend: str, x: torch.Tensor) -> str:
    """Name of the backend that `backend` selects for input x ("auto": triton on CUDA, else torch)."""
    if backend == "auto":
        return "triton" if isinstance(x, torch.Tensor) and x.is_cuda else "torch"
    if backend not in BACKENDS:
        raise Registry("MoE backend", dict.fromkeys(VALID_BACKENDS)).unknown(backend)
    return backend


def autocast_dtype(x) -> torch.dtype | None:
    """The dtype autocast would run a linear layer on x's device in, or None outside autocast."""
    if not isinstance(x, torch.Tensor):
        return None
    dev = x.device.type
    if dev not in ("cuda", "cpu") or not torch.is_autocast_enabled(dev):
        return None
    return torch.get_autocast_dtype(dev)


def autocast_cast(dtype: torch.dtype | None, *tensors):
    """``tensors`` with every floating tensor cast to ``dtype`` (unchanged when it is None)."""
    if dtype is None:
        return tensors
    return tuple(t.to(dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() else t for t in tensors)


def _apply_autocast(x, weight, bias, gates):
    # Like nn.Linear under autocast: a model holding fp32 expert weights that
    # runs in bf16/fp16 autocast computes this matmul in the autocast dtype.
    return autocast_cast(autocast_dtype(x), x, weight, bias, gates)


def moe_linear(x, weight, bias, expert_idx, gates, backend: str = "auto", *, check_indices: bool = True):
    """Gated sum over each sample's k experts of x[n] @ W[e] + b[e].

    x (N, L, D_in), weight (E, D_in, D_out), bias (E, D_out), expert_idx (N, k)
    int64 in [0, E), gates (N, k) -> (N, L, D_out) in x's dtype. Float inputs
    share one dtype (fp32/fp16/bf16) and device and are contiguous; under
    autocast they are first cast to the autocast dtype. Differentiable in x,
    weight, bias and gates for every backend.

    ``check_indices=False`` skips the [0, E) range check, which costs a
    device->host read per call; only callers whose indices come from ``topk``
    over E logits (Switch-DiT's gate) may pass it.
    """
    name = resolve_backend(backend, x)
    x, weight, bias, gates = _apply_autocast(x, weight, bias, gates)
    # The index range check reads a value back from the device; torch.compile
    # cannot trace that, so inside a compiled region it is skipped.
    validate_moe_inputs(x, weight, bias, expert_idx, gates,
                        check_values=check_indices and not torch.compiler.is_compiling())
    return BACKENDS[name](x, weight, bias, expert_idx, gates)
