"""torch.compile traces the Triton MoE mask (the custom op's fake implementation and autograd formula)."""

import torch
from speed_cases import moe_mask_reference
from moe_cases import grads_of, make_case

import kernels

torch.set_num_threads(2)
CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
SQUARE = [(3, 5, 12, 3, 2), (4, 8, 32, 3, 2), (2, 7, 16, 4, 1), (3, 4, 20, 3, 3)]  # (N, L, D, E, k)
TOL = {torch.float32: 2e-3 if CUDA else 1e-5, torch.float16: 1e-2}


def test_compile_traces_triton_moe_mask():
    """Under torch.compile the triton backend is the opaque custom op plus the mask product."""
    x, w, b, idx, g = make_case(3, 5, 12, 12, 3, 2, device=DEVICE)
    gy = torch.randn(x.shape, generator=torch.Generator().manual_seed(7)).to(DEVICE)
    compiled = torch.compile(lambda *a: kernels.moe_mask(*a, backend="triton"), backend="aot_eager", fullgraph=True)
    got = grads_of(compiled, x, w, b, idx, g, gy)
    want = moe_mask_reference(x, w, b, idx, g, gy)
    for a, r in zip(got, want):
        torch.testing.assert_close(a.double(), r, rtol=TOL[torch.float32], atol=TOL[torch.float32] * r.abs().max().item())
