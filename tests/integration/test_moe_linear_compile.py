"""torch.compile traces kernels.moe_linear: the plain-torch path and the Triton custom op (its fake
implementation and autograd formula), checked against a float64 per-sample loop and the torch path
(Switch-DiT expert layer, arXiv 2403.09176, Sec. 3.2)."""

import torch
from moe_cases import check_grads, grads_of, make_case, naive_moe

import kernels

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
TOL_FP32 = 2e-3 if CUDA else 1e-4


def _backend(name):
    return lambda *a: kernels.moe_linear(*a, backend=name)


def test_compile_traces_torch_path():
    x, w, b, idx, g = make_case(3, 5, 12, 20, 3, 2)
    compiled = torch.compile(_backend("torch"), backend="aot_eager", fullgraph=True)
    dy = torch.randn(3, 5, 20)
    d = torch.float64
    want = grads_of(naive_moe, x.to(d), w.to(d), b.to(d), idx, g.to(d), dy.to(d))
    check_grads(grads_of(compiled, x, w, b, idx, g, dy), want, 2e-5)


def test_compile_traces_triton_op():
    case = make_case(3, 5, 12, 20, 3, 2, device=DEVICE)
    compiled = torch.compile(_backend("triton"), backend="aot_eager", fullgraph=True)
    dy = torch.randn(3, 5, 20).to(DEVICE)
    check_grads(grads_of(compiled, *case, dy), grads_of(_backend("torch"), *case, dy), 2 * TOL_FP32)
