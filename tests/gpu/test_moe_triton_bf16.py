"""GPU tier: the fused MoE kernel in bf16 (bf16 tl.dot is not exact under the Triton interpreter,
so these run only where a GPU is present; on a CPU machine they report as skipped)."""
import pytest
import torch

import kernels
from moe_cases import check_grads, grads_of, make_case, naive_moe

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the gpu tier)")]


def _run(fn, x, w, b, idx, g, dy=None):
    if dy is None:
        with torch.no_grad():
            return [fn(x, w, b, idx, g)]
    return grads_of(fn, x, w, b, idx, g, dy)


@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_triton_bf16_gpu(direction):
    case = make_case(4, 64, 64, 64, 3, 2, dtype=torch.bfloat16, device="cuda")
    dy = torch.randn(4, 64, 64, device="cuda", dtype=torch.bfloat16) if direction == "backward" else None
    d = torch.float64
    want = _run(naive_moe, *(t.to(d) for t in case[:3]), case[3], case[4].to(d), dy=None if dy is None else dy.to(d))
    got = _run(lambda *a: kernels.moe_linear(*a, backend="triton"), *case, dy=dy)
    check_grads(got, want, 2e-2)
