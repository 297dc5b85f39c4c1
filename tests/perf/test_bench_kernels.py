"""pytest-benchmark cases for the Switch-DiT expert linear (arXiv 2403.09176, Sec. 3.2).

Marked `benchmark`, so the default test command (-m 'not benchmark') skips
them; run with `python -m pytest tests/perf -m benchmark`. Providers and
inputs come from benchmark/speed/kernel_bench.py; on GPU the shapes are the real S and XL
ones, on CPU the --quick ones (the fused kernel under the Triton interpreter).
Each case also checks its output against the plain-torch backend, so a fast
but wrong provider fails.
"""
import pytest
import torch

from benchmark.speed import kernel_bench as bench
from benchmark.speed.shapes import default_shapes, grid
from kernels import moe_torch

pytestmark = pytest.mark.benchmark
CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
DTYPE = torch.bfloat16 if CUDA else torch.float32
SHAPES = grid(("S", "XL"), (256,)) if CUDA else default_shapes("cpu", quick=True)


def _sync():
    if CUDA:
        torch.cuda.synchronize()


@pytest.mark.parametrize("direction", bench.DIRECTIONS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: s.name)
@pytest.mark.parametrize("provider", sorted(bench.PROVIDERS))
def test_bench_moe_linear(benchmark, provider, shape, direction):
    ok, reason = bench.PROVIDERS[provider].available(DEVICE, DTYPE, shape)
    if not ok:
        pytest.skip(reason)
    inp = bench.make_inputs(shape, DEVICE, DTYPE)
    call, leaves, dy = bench.build(provider, inp)
    if provider != "dense_linear":
        with torch.no_grad():
            want = moe_torch.moe_linear_grouped(inp["x"], inp["w"], inp["b"], inp["idx"], inp["g"]).float()
            got = call().float()
        tol = 3e-2 if DTYPE == torch.bfloat16 else 1e-4
        torch.testing.assert_close(got, want, rtol=tol, atol=tol * want.abs().max().item())

    def run():
        if direction == "fwd":
            with torch.no_grad():
                call()
        else:
            for t in leaves:
                t.grad = None
            call().backward(dy)
        _sync()

    benchmark.extra_info.update(shape=shape.name, direction=direction, dtype=str(DTYPE),
                                nominal_flops=bench.nominal_flops(shape, direction))
    benchmark.pedantic(run, rounds=5, warmup_rounds=1)
