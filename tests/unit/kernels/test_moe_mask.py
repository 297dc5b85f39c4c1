"""kernels.moe_mask: the Switch-DiT block input x·(1 + moe_linear(x)) and its gradients (3).

Every backend is compared, forward and backward, with float64 autograd through the
per-sample loop of moe_cases.naive_moe; the Triton backend runs under TRITON_INTERPRET=1
on CPU (root conftest). x may be wider than the experts, as a float32 residual stream
with 16-bit experts is.
"""

import pytest
import torch
from speed_cases import moe_mask_reference
import kernels
from moe_cases import grads_of, make_case

torch.set_num_threads(2)
CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
SQUARE = [(3, 5, 12, 3, 2), (4, 8, 32, 3, 2), (2, 7, 16, 4, 1), (3, 4, 20, 3, 3)]  # (N, L, D, E, k)
TOL = {torch.float32: 2e-3 if CUDA else 1e-5, torch.float16: 1e-2}


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("expert_dtype", [torch.float32, torch.float16], ids=["fp32", "fp16-experts"])
@pytest.mark.parametrize("shape", SQUARE, ids=lambda s: "x".join(map(str, s)))
def test_moe_mask_matches_float64_loop(backend, expert_dtype, shape):
    n, seq, d, e, k = shape
    x, w, b, idx, g = make_case(n, seq, d, d, e, k, device=DEVICE)
    w, b, g = (t.to(expert_dtype) for t in (w, b, g))
    gy = torch.randn(x.shape, generator=torch.Generator().manual_seed(5)).to(DEVICE)
    got = grads_of(lambda *a: kernels.moe_mask(*a, backend=backend), x, w, b, idx, g, gy)
    want = moe_mask_reference(x, w, b, idx, g, gy)
    for name, a, r in zip(["out", "dx", "dweight", "dbias", "dgates"], got, want):
        # out and dx stay in x's dtype (float32); the expert gradients come back in theirs.
        assert a.dtype == (torch.float32 if name in ("out", "dx") else expert_dtype), name
        scale = r.abs().max().item() + 1e-12
        tol = TOL[expert_dtype]
        torch.testing.assert_close(a.double(), r, rtol=tol, atol=tol * scale, msg=lambda m: f"{name}: {m}")


def test_triton_moe_mask_equals_the_unfused_composition():
    """The fused dx epilogue gives what autograd gives for x·(1 + moe_linear(x)) on the same kernels."""
    x, w, b, idx, g = make_case(4, 8, 32, 32, 3, 2, device=DEVICE)
    gy = torch.randn(x.shape, generator=torch.Generator().manual_seed(6)).to(DEVICE)
    fused = grads_of(lambda *a: kernels.moe_mask(*a, backend="triton"), x, w, b, idx, g, gy)
    unfused = grads_of(lambda x, *a: x * (1 + kernels.moe_linear(x, *a, backend="triton")), x, w, b, idx, g, gy)
    for a, r in zip(fused, unfused):
        torch.testing.assert_close(a, r, rtol=1e-5, atol=1e-5)


def test_moe_mask_under_autocast_runs_the_experts_in_the_autocast_dtype():
    x, w, b, idx, g = make_case(3, 4, 16, 16, 3, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = kernels.moe_mask(x, w, b, idx, g, backend="torch")
    assert out.dtype == torch.float32
    delta = kernels.moe_linear(x.bfloat16(), w.bfloat16(), b.bfloat16(), idx, g.bfloat16(), backend="torch")
    torch.testing.assert_close(out, x * (1 + delta.float()), rtol=0, atol=0)


@pytest.mark.parametrize("kwargs, needle", [
    ({"w": torch.zeros(3, 8, 12), "b": torch.zeros(3, 12)}, "square experts"),
    ({"b": torch.zeros(3, 8, dtype=torch.float16)}, "bias dtype torch.float16 does not match weight dtype"),
    ({"x": torch.zeros(2, 4, 8, dtype=torch.int32)}, "x dtype must be one of"),
    ({"idx": torch.tensor([[0, 3], [1, 2]])}, "expert_idx contains 3"),
])
def test_moe_mask_bad_input(kwargs, needle):
    case = dict(zip("x w b idx g".split(), make_case(2, 4, 8, 8, 3, 2)))
    case.update(kwargs)
    with pytest.raises((ValueError, TypeError), match=needle):
        kernels.moe_mask(case["x"], case["w"], case["b"], case["idx"], case["g"], backend="torch")


def test_apply_mask_gradients_keep_the_mask_dtype():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 8, generator=gen, requires_grad=True)
    delta = torch.randn(2, 4, 8, generator=gen).bfloat16().requires_grad_()
    g = torch.randn(2, 4, 8, generator=gen)
    dx, dd = torch.autograd.grad(kernels.apply_mask(x, delta), (x, delta), g)
    assert dd.dtype == torch.bfloat16 and dx.dtype == torch.float32
    torch.testing.assert_close(dx, g * (1 + delta.float()), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(dd, (g * x).bfloat16(), rtol=0, atol=0)
    # A broadcast mask (DTR: one row per sample) in float64 against finite differences.
    x64 = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    d64 = torch.randn(2, 1, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(kernels.apply_mask, (x64, d64))
    # A mask that needs no gradient (DTR's table) gets none.
    assert torch.autograd.grad(kernels.apply_mask(x64, d64.detach()).sum(), x64)[0].shape == x64.shape
