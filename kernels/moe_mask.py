"""The Switch-DiT block input x·m with m = 1 + δ, where δ is the expert mixture of x.

Switch-DiT (Park et al. 2024, arXiv 2403.09176, Sec. 3.2) masks each block's
input with m = 1 + Σ_j g_j (x W_{e_j} + b_{e_j}); DTR (arXiv 2310.07138,
Sec. 3.2) with a fixed 0/1 mask m_t, i.e. δ = m_t − 1. Both need x·(1 + δ)
and its gradients

    d(x·(1 + δ))/dx = g·(1 + δ),   d(x·(1 + δ))/dδ = g·x                    (3)

* `apply_mask(x, δ)` is (3) for any δ (the DTR table, or an expert output
  from any backend) in two passes over the activations: autograd's own
  formula for ``addcmul(x, x, δ)`` takes four (two products, a cast of g·x
  to δ's 16-bit dtype under autocast, and the sum of x's two terms).
* `moe_mask(x, weight, bias, expert_idx, gates)` is x·(1 + moe_linear(x, ...)).
  On the "triton" backend the dx launch adds g·(1 + δ) in its epilogue and
  writes x's dtype, so x's gradient is one tensor from one launch.

The expert layer runs in the weights' dtype (the autocast dtype under
autocast) and x·m in x's, as a float32 residual stream keeps it.
"""
from __future__ import annotations

import torch

from .moe import BACKENDS, autocast_cast, autocast_dtype, resolve_backend
from .registry import Registry
from .moe_validate import validate_moe_inputs


class _ApplyMask(torch.autograd.Function):
    """x·(1 + δ), i.e. ``addcmul(x, x, δ)``, with the two-pass backward (3)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, delta)
        return torch.addcmul(x, x, delta)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        x, delta = ctx.saved_tensors
        dx = torch.addcmul(grad, grad, delta) if ctx.needs_input_grad[0] else None
        ddelta = None
        if ctx.needs_input_grad[1]:
            if delta.shape == grad.shape:
                ddelta = torch.empty_like(delta)
                torch.mul(grad, x, out=ddelta)  # computed in the promoted dtype, stored in δ's
            else:  # a broadcast δ, e.g. one (N, 1, D) mask for all tokens
                ddelta = (grad * x).sum_to_size(delta.shape).to(delta.dtype)
        return dx, ddelta


def apply_mask(x: torch.Tensor, mask_delta: torch.Tensor) -> torch.Tensor:
    """x·(1 + δ) for a channel mask given as its offset δ = m − 1 (broadcastable to x)."""
    return _ApplyMask.apply(x, mask_delta)


def _mask_torch(x, weight, bias, expert_idx, gates):
    return apply_mask(x, BACKENDS["torch"](x.to(weight.dtype), weight, bias, expert_idx, gates))


def _mask_triton(x, weight, bias, expert_idx, gates):
    from .moe_triton import moe_mask_triton  # first use only, as for moe_linear

    return moe_mask_triton(x, weight, bias, expert_idx, gates)


MASK_BACKENDS = Registry("mask backend", {"torch": _mask_torch, "triton": _mask_triton})


def moe_mask(x, weight, bias, expert_idx, gates, backend: str = "auto", *, check_indices: bool = True):
    """x·(1 + moe_linear(x, weight, bias, expert_idx, gates)) in x's dtype; needs D_in == D_out.

    Arguments as for `kernels.moe_linear`, except that x may be wider than the weights
    (e.g. a float32 residual stream with bfloat16 experts): the expert layer runs in the
    weights' dtype, or the autocast dtype under autocast. Differentiable in x, weight,
    bias and gates for every backend.
    """
    name = resolve_backend(backend, x)
    # x keeps its dtype: the backends cast it themselves, once.
    weight, bias, gates = autocast_cast(autocast_dtype(x), weight, bias, gates)
    validate_moe_inputs(x, weight, bias, expert_idx, gates, x_dtype_may_differ=True,
                        check_values=check_indices and not torch.compiler.is_compiling())
    if weight.shape[1] != weight.shape[2]:
        raise ValueError(f"moe_mask needs square experts (D_in == D_out) to mask its own input; "
                         f"weight has shape {tuple(weight.shape)}")
    return MASK_BACKENDS[name](x, weight, bias, expert_idx, gates)
