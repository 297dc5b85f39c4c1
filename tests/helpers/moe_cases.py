"""Shared inputs and the independent reference for the MoE expert-layer tests.

naive_moe is the per-sample loop of the Switch-DiT expert layer (arXiv 2403.09176,
Sec. 3.2): out[n] = sum_j g[n, j] * (x[n] @ W[idx[n, j]] + b[idx[n, j]]).
"""
import torch


def naive_moe(x, w, b, idx, g):
    """Independent reference: loop over samples and slots."""
    rows = []
    for n in range(x.shape[0]):
        acc = torch.zeros(x.shape[1], w.shape[2], dtype=x.dtype, device=x.device)
        for j in range(idx.shape[1]):
            e = int(idx[n, j])
            acc = acc + g[n, j] * (x[n] @ w[e] + b[e])
        rows.append(acc)
    return torch.stack(rows)


def make_case(n, seq, din, dout, e, k, dtype=torch.float32, routing="random", seed=0, device="cpu"):
    """x, W, b, expert_idx, gates for one routing pattern, drawn from a seeded generator."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, seq, din, generator=gen)
    w = torch.randn(e, din, dout, generator=gen) / din ** 0.5
    b = torch.randn(e, dout, generator=gen) * 0.5
    if routing == "random":
        idx = torch.stack([torch.randperm(e, generator=gen)[:k] for _ in range(n)])
    elif routing == "shared":  # one timestep for the batch: every sample, same experts
        idx = torch.arange(0, 2 * k, 2)[None, :].remainder(e).repeat(n, 1)
    elif routing == "duplicate":  # the last expert listed k times: every gate counts, others idle
        idx = torch.full((n, k), e - 1, dtype=torch.int64)
    else:
        raise AssertionError(routing)
    g = torch.softmax(torch.randn(n, k, generator=gen), dim=1)
    return [t.to(dtype).to(device) for t in (x, w, b)] + [idx.to(device), g.to(dtype).to(device)]


def grads_of(fn, x, w, b, idx, g, dy):
    """[out, dx, dweight, dbias, dgates] of fn(x, w, b, idx, g) for upstream gradient dy (fresh leaves)."""
    leaves = [t.detach().clone().requires_grad_(True) for t in (x, w, b, g)]
    y = fn(leaves[0], leaves[1], leaves[2], idx, leaves[3])
    y.backward(dy)
    return [y.detach()] + [t.grad for t in leaves]


def check_grads(got, want, rel):
    """Each of (out, dx, dweight, dbias, dgates) close to the reference, relative to its largest entry."""
    for name, a, r in zip(["out", "dx", "dweight", "dbias", "dgates"], got, want):
        assert a.dtype == r.dtype or r.dtype == torch.float64, name
        scale = r.abs().max().item() + 1e-12
        torch.testing.assert_close(a.to(torch.float64), r.to(torch.float64), rtol=rel, atol=rel * scale,
                                   msg=lambda m: f"{name}: {m}")
