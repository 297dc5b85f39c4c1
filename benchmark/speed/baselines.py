"""Baseline formulations of the Switch-DiT expert linear, for benchmarking.

All compute eq. (1) of kernels/moe_triton.py,
out[n] = sum_j g_j (x[n] @ W[e_j] + b[e_j]) (arXiv 2403.09176, Sec. 3.2),
the way other code does it, so benchmark/speed/kernel_bench.py can time them side by side:

* `moe_linear_official`: the formulation of the official Switch-DiT code
  (TaskMoE + ParallelExperts): sort the N*k (sample, slot) assignments by
  expert, gather a copy of the routed samples' rows, read the per-expert row
  counts back to the host, one `torch.mm` per expert into a split output
  buffer plus a per-expert bias add (and the mirror image in backward: per
  expert dx and dW matmuls and a bias sum), scale by the gates and
  `index_add` into a zero output. The official code also drops slots whose
  gate is exactly zero; softmax gates never are, so that step is omitted.
* `moe_linear_grouped_mm`: the same gather/scatter around one
  `torch._grouped_mm` call (a cuBLAS/CUTLASS grouped GEMM) instead of the
  per-expert loop; no host sync. Only where the installed torch has it.
* `dense_linear_rows`: not an MoE at all: one dense D_in -> D_out linear over
  N*k*L rows, the work a k-expert layer does without any routing overhead.
* `moe_linear_loop`: eq. (1) read literally, one product per (sample, slot); in float64
  it is the reference every benchmark row's error is measured against.
"""
from __future__ import annotations

import torch


class _PerExpertLinear(torch.autograd.Function):
    """rows (R, D_in) split into consecutive per-expert blocks of `sizes` rows."""

    @staticmethod
    def forward(ctx, rows, expert_rows, weight, bias):
        sizes = expert_rows.tolist()  # the host sync the official code pays per call
        out = rows.new_empty((rows.shape[0], weight.shape[2]))
        for e, (inp, o) in enumerate(zip(rows.split(sizes), out.split(sizes))):
            torch.mm(inp, weight[e], out=o)
            o.add_(bias[e])
        ctx.sizes = sizes
        ctx.save_for_backward(rows, weight)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        rows, weight = ctx.saved_tensors
        sizes = ctx.sizes
        grad_out = grad_out.contiguous()
        d_rows = torch.empty_like(rows)
        d_weight = torch.empty_like(weight)
        d_bias = weight.new_empty((weight.shape[0], weight.shape[2]))
        for e, (inp, go, dr) in enumerate(zip(rows.split(sizes), grad_out.split(sizes), d_rows.split(sizes))):
            torch.mm(go, weight[e].t(), out=dr)
            torch.mm(inp.t(), go, out=d_weight[e])
            torch.sum(go, dim=0, out=d_bias[e])
        return d_rows, None, d_weight, d_bias


def _sorted_assignments(expert_idx, gates):
    """(sample index, gate, expert) of the N*k assignments sorted by expert."""
    k = expert_idx.shape[1]
    flat_e = expert_idx.reshape(-1)
    order = torch.argsort(flat_e, stable=True)
    return order // k, gates.reshape(-1)[order], flat_e[order]


def moe_linear_official(x, weight, bias, expert_idx, gates):
    """Gather, per-expert torch.mm after a host read of the counts, gate, index_add."""
    n, seq, d_in = x.shape
    e, _, d_out = weight.shape
    batch_index, batch_gates, _ = _sorted_assignments(expert_idx, gates)
    expert_rows = torch.bincount(expert_idx.reshape(-1), minlength=e) * seq
    rows = x[batch_index].reshape(-1, d_in)
    y = _PerExpertLinear.apply(rows, expert_rows, weight, bias)
    y = y.view(-1, seq, d_out) * batch_gates[:, None, None]
    return x.new_zeros((n, seq, d_out)).index_add(0, batch_index, y)


def grouped_mm_available(device: torch.device, dtype: torch.dtype) -> tuple[bool, str]:
    """(usable, reason) for torch._grouped_mm on this device and dtype."""
    if not hasattr(torch, "_grouped_mm"):
        return False, f"torch {torch.__version__} has no torch._grouped_mm"
    if device.type == "cuda":
        major, _ = torch.cuda.get_device_capability(device)
        if major < 9:
            return False, f"torch._grouped_mm needs compute capability >= 9.0, device has {major}.x"
    return True, ""


def moe_linear_grouped_mm(x, weight, bias, expert_idx, gates):
    """Gather, one torch._grouped_mm over the expert-sorted rows, gate, index_add."""
    n, seq, d_in = x.shape
    e, _, d_out = weight.shape
    batch_index, batch_gates, batch_expert = _sorted_assignments(expert_idx, gates)
    counts = torch.bincount(expert_idx.reshape(-1), minlength=e)
    offs = torch.cumsum(counts * seq, 0).to(torch.int32)
    rows = x[batch_index].reshape(-1, d_in)
    y = torch._grouped_mm(rows, weight, offs=offs).view(-1, seq, d_out)
    y = (y + bias[batch_expert][:, None, :]) * batch_gates[:, None, None]
    return x.new_zeros((n, seq, d_out)).index_add(0, batch_index, y)


def dense_linear_rows(rows, weight, bias):
    """rows (R, D_in) @ weight (D_in, D_out) + bias: the no-routing reference."""
    return torch.addmm(bias, rows, weight)


def moe_linear_loop(x, weight, bias, expert_idx, gates):
    """Eq. (1) as a plain loop over samples n and slots j: sum_j g[n, j] (x[n] @ W[e] + b[e])."""
    n, k = expert_idx.shape
    rows = []
    for i in range(n):
        acc = 0
        for j in range(k):
            e = int(expert_idx[i, j])
            acc = acc + gates[i, j] * (x[i] @ weight[e] + bias[e])
        rows.append(acc)
    return torch.stack(rows)
