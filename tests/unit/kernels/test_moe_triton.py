"""The fused Triton MoE expert linear (kernels/moe_triton.py).

On CPU the kernels run under TRITON_INTERPRET=1 (set by the root conftest), so
shapes are tiny. Each result is compared with a float64 per-sample loop
written here, out[n] = sum_j g[n, j] (x[n] @ W[idx[n, j]] + b[idx[n, j]])
(arXiv 2403.09176, Sec. 3.2), and with the plain-torch backend.
"""
import pytest
import torch

import kernels
from moe_cases import check_grads as check
from moe_cases import grads_of
from moe_cases import make_case as _make_case
from moe_cases import naive_moe

torch.set_num_threads(2)
CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"


def make_case(*args, **kwargs):
    return _make_case(*args, device=DEVICE, **kwargs)


def run(fn, x, w, b, idx, g, dy=None):
    """out and, when dy is given, (dx, dW, db, dgates)."""
    if dy is None:
        with torch.no_grad():
            return [fn(x, w, b, idx, g)]
    return grads_of(fn, x, w, b, idx, g, dy)


def triton_fn(*a):
    return kernels.moe_linear(*a, backend="triton")


def torch_fn(*a):
    return kernels.moe_linear(*a, backend="torch")


# fp32 is exact under the interpreter but uses tf32 tensor-core dots on GPU.
TOL = {torch.float32: 2e-3 if CUDA else 1e-4, torch.float16: 1e-2, torch.bfloat16: 2e-2}
SHAPES = [  # (N, L, D_in, D_out, E, k): ragged tiles, even tiles, k = 1, k = E
    (3, 5, 12, 20, 3, 2),
    (4, 8, 32, 32, 3, 2),
    (2, 7, 16, 24, 4, 1),
    (3, 4, 20, 16, 3, 3),
]


@pytest.mark.parametrize("direction", ["forward", "backward"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_triton_matches_naive_and_torch(shape, dtype, direction):
    case = make_case(*shape, dtype=dtype)
    dy = None
    if direction == "backward":
        dy = torch.randn(shape[0], shape[1], shape[3], generator=torch.Generator().manual_seed(1)).to(dtype).to(DEVICE)
    got = run(triton_fn, *case, dy=dy)
    assert got[0].dtype == dtype and got[0].shape == (shape[0], shape[1], shape[3])
    d = torch.float64
    want = run(naive_moe, *(t.to(d) for t in case[:3]), case[3], case[4].to(d), dy=None if dy is None else dy.to(d))
    check(got, want, TOL[dtype])
    check(got, run(torch_fn, *case, dy=dy), 2 * TOL[dtype])


@pytest.mark.parametrize("routing", ["shared", "duplicate"])
def test_triton_special_routings_and_idle_experts(routing):
    # E=4, k=2: "shared" routes every sample to experts (0, 2) and "duplicate"
    # lists expert 3 twice, so other experts get no rows and zero gradients.
    case = make_case(5, 6, 12, 20, 4, 2, routing=routing)
    dy = torch.randn(5, 6, 20).to(DEVICE)
    got = run(triton_fn, *case, dy=dy)
    d = torch.float64
    check(got, run(naive_moe, *(t.to(d) for t in case[:3]), case[3], case[4].to(d), dy=dy.to(d)), TOL[torch.float32])
    unused = sorted(set(range(4)) - set(case[3].flatten().tolist()))
    assert len(unused) >= 2
    assert torch.count_nonzero(got[2][unused]) == 0 and torch.count_nonzero(got[3][unused]) == 0


def test_triton_is_deterministic():
    case = make_case(3, 5, 12, 20, 3, 2)
    dy = torch.randn(3, 5, 20).to(DEVICE)
    first, second = run(triton_fn, *case, dy=dy), run(triton_fn, *case, dy=dy)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_triton_only_requested_grads():
    x, w, b, idx, g = make_case(2, 4, 16, 16, 3, 2)
    w = w.clone().requires_grad_(True)
    triton_fn(x, w, b, idx, g).sum().backward()
    ones = torch.ones(2, 4, 16, dtype=torch.float64, device=DEVICE)
    want = run(naive_moe, *(t.double() for t in (x, w.detach(), b)), idx, g.double(), dy=ones)
    tol = TOL[torch.float32]
    torch.testing.assert_close(w.grad.double(), want[2], rtol=tol, atol=tol * want[2].abs().max().item())


def test_traced_backward_is_the_opaque_op():
    """AOT autograd traces the custom op's backward with fake tensors, and on some torch
    versions outside dynamo (is_compiling() is False there). The traced backward must be the
    opaque backward op, never a kernel launch: a launch on fake tensors fails on a GPU
    ("Cannot access data pointer of Tensor")."""
    from torch.fx.experimental.proxy_tensor import make_fx

    from kernels.moe_triton import moe_linear_fused

    def grads(x, w, b, idx, g, dy):
        out = moe_linear_fused(x, w, b, idx, g)
        return torch.autograd.grad(out, (x, w, b, g), dy)

    x, w, b, idx, g = make_case(2, 4, 12, 16, 3, 2)
    leaves = [t.detach().clone().requires_grad_(True) for t in (x, w, b)]
    gm = make_fx(grads, tracing_mode="fake")(*leaves, idx, g.detach().clone().requires_grad_(True),
                                              torch.randn(2, 4, 16).to(DEVICE))
    targets = {str(n.target) for n in gm.graph.nodes if n.op == "call_function"}
    assert "dit_bench.moe_linear_backward.default" in targets, targets


def test_fake_impl_gives_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode

    from kernels.moe_triton import moe_linear_fused, moe_linear_fused_backward

    with FakeTensorMode():
        x, w, b = torch.empty(2, 5, 8), torch.empty(3, 8, 6), torch.empty(3, 6)
        idx, g = torch.zeros(2, 2, dtype=torch.int64), torch.empty(2, 2)
        assert moe_linear_fused(x, w, b, idx, g).shape == (2, 5, 6)
        grads = moe_linear_fused_backward(torch.empty(2, 5, 6), x, w, b, idx, g, True, True)
        assert [tuple(t.shape) for t in grads] == [(2, 5, 8), (3, 8, 6), (3, 6), (2, 2)]


def test_triton_rejects_float64():
    x, w, b, idx, g = make_case(2, 3, 4, 5, 3, 2, dtype=torch.float64)
    with pytest.raises(TypeError, match="backend='triton' supports dtypes"):
        triton_fn(x, w, b, idx, g)


@pytest.mark.parametrize("swap_ab,split", [(False, 2), (True, 2), (True, 5)])
def test_triton_many_tiles_and_sample_split(swap_ab, split):
    # 16-wide tiles give several row/column/K tiles with ragged edges (L=18,
    # D_in=34, D_out=20: two row blocks per sample in the dW walk), the
    # swapped-operand variant, and the dW split of each expert's sample list
    # (split 5 > the 2 samples an expert gets here: some shares are empty).
    from kernels.moe_triton import GradTiles, MMTiles, TilePlan, moe_linear_triton

    case = make_case(3, 18, 34, 20, 3, 2)
    dy = torch.randn(3, 18, 20, generator=torch.Generator().manual_seed(2)).to(DEVICE)
    plan = TilePlan(mm=MMTiles(16, 16, 16, 4, 2, swap_ab=swap_ab), grad=GradTiles(16, 16, 16, 4, 2), split=split)
    got = run(lambda *a: moe_linear_triton(*a, plan=plan), *case, dy=dy)
    d = torch.float64
    check(got, run(naive_moe, *(t.to(d) for t in case[:3]), case[3], case[4].to(d), dy=dy.to(d)), TOL[torch.float32])
