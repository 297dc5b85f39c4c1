"""Plain-torch implementations of the Switch-DiT expert linear.

Switch-DiT (Park et al. 2024, arXiv 2403.09176, Sec. 3.2) gates a sparse
mixture of experts by the timestep, so a routing decision covers a whole
sample. For sample n with experts e_j = expert_idx[n, j] and gates
g_j = gates[n, j]:

    out[n] = sum_j g_j * (x[n] @ W[e_j] + b[e_j])                      (1)

Two equivalent evaluations of (1) live here:

* `moe_linear_mixed` uses linearity in W: (1) equals
  x[n] @ (sum_j g_j W[e_j]) + sum_j g_j b[e_j]. With C the (N, E) matrix of
  summed gates per expert, the per-sample weights are one (N, E) @ (E, D_in*D_out)
  product and the layer is one batched matmul. It does one GEMM of N*L rows
  instead of k, has no data-dependent shapes (torch.compile traces it whole)
  and handles experts that receive no sample for free. Its cost is the
  (N, D_in, D_out) mixed-weight tensor, small next to the activations when
  D <= 2*k*L. It is the default.
* `moe_linear_grouped` is the mixture-of-experts evaluation (ScatterMoE,
  arXiv 2403.08245, Sec. 3): sort the N*k assignments by expert, one matmul per
  expert over the samples routed to it, scale by the gates and scatter-add.
  It needs the per-expert counts on the host (one sync, a graph break under
  torch.compile); kept as the second reference (the GPU acceptance run's float64
  reference in benchmark/speed/gpu_check.py).

Both are pure tensor-in/tensor-out and differentiable by autograd. Sums of
expert outputs are accumulated in float32 for 16-bit inputs.

`moe_linear_shared` is the special case in which every sample has the same
routing, e.g. a sampling step, where the whole batch (and its classifier-free
guidance copy) sits at one timestep. Then (1) is one plain linear over all N*L
rows with the single weight sum_e c_e W[e] and bias sum_e c_e b[e], where c is
the (E,) row of `expert_coefficients`: one D_in x D_out mixed weight instead of
N of them, and one GEMM (addmm) with the bias folded in.
"""
from __future__ import annotations

import torch


def expert_coefficients(expert_idx: torch.Tensor, gates: torch.Tensor, num_experts: int) -> torch.Tensor:
    """(N, E) matrix C with C[n, e] = sum of gates[n, j] over slots j routed to e.

    A scatter-add (not a scatter) so a sample that lists one expert twice gets
    both gates, exactly as (1) does.
    """
    coef = gates.new_zeros(gates.shape[0], num_experts)
    return coef.scatter_add(1, expert_idx, gates)


def moe_linear_shared(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
    """Eq. (1) when all samples share one routing, given as the (E,) gate-per-expert vector ``coef``.

    x (..., D_in) of any layout that flattens to rows, weight (E, D_in, D_out),
    bias (E, D_out) -> (..., D_out). Equals `moe_linear_mixed` with every row of
    its C equal to ``coef``.
    """
    e, d_in, d_out = weight.shape
    w_mix = (coef @ weight.reshape(e, d_in * d_out)).view(d_in, d_out)
    out = torch.addmm(coef @ bias, x.reshape(-1, d_in), w_mix)
    return out.view(*x.shape[:-1], d_out)


def moe_linear_mixed(x, weight, bias, expert_idx, gates):
    """Eq. (1) as one batched matmul against per-sample mixed weights."""
    n, _, d_in = x.shape
    e, _, d_out = weight.shape
    coef = expert_coefficients(expert_idx, gates, e)
    w_mix = (coef @ weight.reshape(e, d_in * d_out)).reshape(n, d_in, d_out)
    b_mix = coef @ bias
    return torch.baddbmm(b_mix.unsqueeze(1), x, w_mix)


def moe_linear_grouped(x, weight, bias, expert_idx, gates):
    """Eq. (1) as one matmul per expert over the samples sorted to it."""
    n, seq, _ = x.shape
    e, _, d_out = weight.shape
    k = expert_idx.shape[1]
    flat = expert_idx.reshape(-1)
    # Stable sort keeps (sample, slot) order inside each expert's group, so the
    # scatter-add below sums in a fixed order (deterministic on CPU).
    order = torch.argsort(flat, stable=True)
    counts = torch.bincount(flat, minlength=e).tolist()
    sample = order // k
    g = gates.reshape(-1)[order]
    acc_dtype = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    out = x.new_zeros((n, seq, d_out), dtype=acc_dtype)
    start = 0
    for expert, count in enumerate(counts):
        if count == 0:
            continue  # an expert nobody picked contributes nothing
        rows = sample[start:start + count]
        y = torch.matmul(x[rows], weight[expert]) + bias[expert]
        y = y.to(acc_dtype) * g[start:start + count, None, None].to(acc_dtype)
        out = out.index_add(0, rows, y)
        start += count
    return out.to(x.dtype)


# Variant table; `moe_linear_torch` is the chosen one.
TORCH_VARIANTS = {"mixed": moe_linear_mixed, "grouped": moe_linear_grouped}
DEFAULT_TORCH_VARIANT = "mixed"


def moe_linear_torch(x, weight, bias, expert_idx, gates):
    """The plain-torch backend of `kernels.moe_linear` (no validation here)."""
    return TORCH_VARIANTS[DEFAULT_TORCH_VARIANT](x, weight, bias, expert_idx, gates)
