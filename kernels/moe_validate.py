"""Input checks shared by every backend of the MoE expert linear.

The expert layer of Switch-DiT (Park et al. 2024, arXiv 2403.09176, Sec. 3.2)
routes whole samples, not tokens: each sample n picks k experts from its
timestep and every one of its L tokens goes through the same experts. The
contract checked here is

    x (N, L, D_in), weight (E, D_in, D_out), bias (E, D_out),
    expert_idx (N, k) int64 with values in [0, E), gates (N, k)

with x, weight, bias and gates of one floating dtype (fp32/fp16/bf16, and
fp64 for the torch path) on one device and all of
them contiguous. Every failure is a one-line ValueError/TypeError naming the
bad value and what is valid, raised before any compute is launched.
"""
from __future__ import annotations

import torch

# float64 is accepted for references; the Triton backend narrows this further.
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def _check_tensor(name: str, t, rank: int, shape_doc: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape {shape_doc}, got {type(t).__name__}")
    if t.dim() != rank:
        raise ValueError(f"{name} must have rank {rank} {shape_doc}, got shape {tuple(t.shape)}")
    if not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous (call .contiguous()), got strides {t.stride()}")


def validate_moe_inputs(x, weight, bias, expert_idx, gates, *, check_values: bool = True,
                        x_dtype_may_differ: bool = False) -> None:
    """Raise a clear error if the inputs break the moe_linear contract.

    `check_values` also verifies that expert_idx lies in [0, E); that needs one
    device->host read, so callers skip it while being traced by torch.compile.
    `x_dtype_may_differ` lets x have its own float dtype (`moe_mask` casts it);
    weight, bias and gates still share one.
    """
    _check_tensor("x", x, 3, "(N, L, D_in)")
    _check_tensor("weight", weight, 3, "(E, D_in, D_out)")
    _check_tensor("bias", bias, 2, "(E, D_out)")
    _check_tensor("expert_idx", expert_idx, 2, "(N, k)")
    _check_tensor("gates", gates, 2, "(N, k)")

    for name, t in (("x", x), ("weight", weight)):
        if t.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{name} dtype must be one of {[str(d) for d in FLOAT_DTYPES]}, got {t.dtype}")
    ref, ref_name = (weight, "weight") if x_dtype_may_differ else (x, "x")
    for name, t in (("weight", weight), ("bias", bias), ("gates", gates)):
        if t.dtype != ref.dtype:
            raise TypeError(f"{name} dtype {t.dtype} does not match {ref_name} dtype {ref.dtype}; "
                            f"{'weight, bias and gates' if x_dtype_may_differ else 'all float inputs'} must share one dtype")
    if expert_idx.dtype != torch.int64:
        raise TypeError(f"expert_idx must be torch.int64, got {expert_idx.dtype}")
    for name, t in (("weight", weight), ("bias", bias), ("expert_idx", expert_idx), ("gates", gates)):
        if t.device != x.device:
            raise ValueError(f"{name} is on {t.device} but x is on {x.device}; all inputs must be on one device")

    n, _, d_in = x.shape
    e, w_in, d_out = weight.shape
    if w_in != d_in:
        raise ValueError(f"weight shape {tuple(weight.shape)} has D_in={w_in} but x has D_in={d_in}")
    if e < 1 or d_in < 1 or d_out < 1:
        raise ValueError(f"weight shape {tuple(weight.shape)} must have E, D_in and D_out >= 1")
    if tuple(bias.shape) != (e, d_out):
        raise ValueError(f"bias shape {tuple(bias.shape)} must be (E, D_out) = {(e, d_out)}")
    if expert_idx.shape[0] != n:
        raise ValueError(f"expert_idx shape {tuple(expert_idx.shape)} must be (N, k) with N={n}")
    k = expert_idx.shape[1]
    if not 1 <= k <= e:
        raise ValueError(f"expert_idx has k={k} slots; valid is 1 <= k <= E={e}")
    if tuple(gates.shape) != (n, k):
        raise ValueError(f"gates shape {tuple(gates.shape)} must match expert_idx shape (N, k) = {(n, k)}")

    if check_values and expert_idx.numel() > 0:
        lo, hi = int(expert_idx.min()), int(expert_idx.max())
        if lo < 0 or hi >= e:
            bad = lo if lo < 0 else hi
            raise ValueError(f"expert_idx contains {bad}; valid expert indices are in [0, {e})")
