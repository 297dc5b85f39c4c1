"""kernels.moe_linear: plain-torch path, baselines, input validation
(torch.compile: tests/integration/test_moe_linear_compile.py).

Every result is checked against a per-sample loop written here, in float64:
out[n] = sum_j g[n, j] * (x[n] @ W[idx[n, j]] + b[idx[n, j]])
(Switch-DiT expert layer, arXiv 2403.09176, Sec. 3.2).
"""
import pytest
import torch

import kernels
from benchmark.speed import baselines
from kernels import moe_torch
from moe_cases import check_grads, grads_of, make_case, naive_moe

torch.set_num_threads(2)


def reference(x, w, b, idx, g, dy):
    d = torch.float64
    return grads_of(naive_moe, x.to(d), w.to(d), b.to(d), idx, g.to(d), dy.to(d))


SHAPES = [  # (N, L, D_in, D_out, E, k)
    (3, 5, 12, 20, 3, 2),
    (4, 8, 32, 32, 3, 2),
    (2, 7, 16, 24, 4, 1),
    (3, 4, 20, 16, 3, 3),
]
VARIANTS = {
    "mixed": moe_torch.moe_linear_mixed,
    "grouped": moe_torch.moe_linear_grouped,
    "public": lambda *a: kernels.moe_linear(*a, backend="torch"),
    "official": baselines.moe_linear_official,
    "grouped_mm": baselines.moe_linear_grouped_mm,
    "loop": baselines.moe_linear_loop,
}


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_torch_paths_match_naive_loop_fp32(shape, variant):
    case = make_case(*shape)
    dy = torch.randn(shape[0], shape[1], shape[3], generator=torch.Generator().manual_seed(1))
    check_grads(grads_of(VARIANTS[variant], *case, dy), reference(*case, dy), 2e-5)


@pytest.mark.parametrize("routing", ["shared", "duplicate"])
@pytest.mark.parametrize("variant", ["mixed", "grouped", "official"])
def test_torch_paths_special_routings(routing, variant):
    # "shared" with E=4, k=2 leaves experts 1 and 3 without any row.
    case = make_case(5, 6, 12, 12, 4, 2, routing=routing)
    dy = torch.randn(5, 6, 12)
    got = grads_of(VARIANTS[variant], *case, dy)
    check_grads(got, reference(*case, dy), 2e-5)
    unused = sorted(set(range(4)) - set(case[3].flatten().tolist()))
    assert unused, "routing should leave an expert unused"
    assert torch.count_nonzero(got[2][unused]) == 0 and torch.count_nonzero(got[3][unused]) == 0


@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_torch_path_fp16(direction):
    case = make_case(3, 8, 32, 24, 3, 2, dtype=torch.float16)
    dy = torch.randn(3, 8, 24).half()
    want = reference(*case, dy)
    if direction == "forward":
        with torch.no_grad():
            out = kernels.moe_linear(*case, backend="torch")
        assert out.dtype == torch.float16
        torch.testing.assert_close(out.double(), want[0], rtol=1e-2, atol=1e-2 * want[0].abs().max().item())
    else:
        check_grads(grads_of(lambda *a: kernels.moe_linear(*a, backend="torch"), *case, dy), want, 1e-2)


def test_autocast_runs_in_autocast_dtype():
    x, w, b, idx, g = make_case(2, 4, 16, 16, 3, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = kernels.moe_linear(x, w, b, idx, g, backend="torch")
    assert out.dtype == torch.bfloat16
    want = naive_moe(*(t.double() for t in (x, w, b)), idx, g.double())
    torch.testing.assert_close(out.double(), want, rtol=3e-2, atol=3e-2 * want.abs().max().item())


def test_auto_backend_picks_torch_on_cpu():
    x = torch.zeros(1, 1, 1)
    assert kernels.resolve_backend("auto", x) == "torch"
    assert kernels.resolve_backend("triton", x) == "triton"


def test_empty_batch():
    x, w, b, idx, g = make_case(2, 3, 8, 8, 3, 2)
    out = kernels.moe_linear(x[:0], w, b, idx[:0], g[:0], backend="torch")
    assert out.shape == (0, 3, 8)


# -------------------------------------------------------------- bad inputs
def _good():
    return make_case(2, 3, 4, 5, 3, 2)


def _replace(i, value):
    args = _good()
    args[i] = value(args) if callable(value) else value
    return args


BAD_INPUTS = {
    "x not a tensor": (lambda: _replace(0, [[1.0]]), TypeError, "x must be a torch.Tensor"),
    "x wrong rank": (lambda: _replace(0, torch.zeros(6, 4)), ValueError, "x must have rank 3"),
    "x non-contiguous": (lambda: _replace(0, lambda a: a[0].transpose(0, 1).contiguous().transpose(0, 1)),
                         ValueError, "x must be contiguous"),
    "x integer": (lambda: _replace(0, torch.zeros(2, 3, 4, dtype=torch.int32)), TypeError, "x dtype must be one of"),
    "weight dtype mismatch": (lambda: _replace(1, lambda a: a[1].half()), TypeError, "weight dtype torch.float16"),
    "gates dtype mismatch": (lambda: _replace(4, lambda a: a[4].double()), TypeError, "gates dtype torch.float64"),
    "weight on other device": (lambda: _replace(1, lambda a: a[1].to("meta")), ValueError, "weight is on meta"),
    "weight D_in mismatch": (lambda: _replace(1, torch.zeros(3, 7, 5)), ValueError, "has D_in=7"),
    "bias wrong shape": (lambda: _replace(2, torch.zeros(3, 6)), ValueError, "bias shape (3, 6)"),
    "idx int32": (lambda: _replace(3, lambda a: a[3].int()), TypeError, "expert_idx must be torch.int64"),
    "idx wrong batch": (lambda: _replace(3, torch.zeros(3, 2, dtype=torch.int64)), ValueError, "expert_idx shape (3, 2)"),
    "k larger than E": (lambda: _replace(3, torch.zeros(2, 4, dtype=torch.int64)), ValueError, "k=4"),
    "idx too large": (lambda: _replace(3, torch.tensor([[0, 3], [1, 2]])), ValueError, "contains 3; valid expert indices are in [0, 3)"),
    "idx negative": (lambda: _replace(3, torch.tensor([[0, -1], [1, 2]])), ValueError, "contains -1"),
    "gates wrong shape": (lambda: _replace(4, torch.zeros(2, 3)), ValueError, "gates shape (2, 3)"),
    "gates wrong rank": (lambda: _replace(4, torch.zeros(2)), ValueError, "gates must have rank 2"),
}


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
@pytest.mark.parametrize("backend", ["torch", "triton", "auto"])
def test_bad_inputs_raise_one_line_errors(name, backend):
    build, exc, fragment = BAD_INPUTS[name]
    with pytest.raises(exc) as info:
        kernels.moe_linear(*build(), backend=backend)
    msg = str(info.value)
    assert fragment in msg and "\n" not in msg


@pytest.mark.parametrize("backend", ["cuda", "", None, "Torch"])
def test_unknown_backend(backend):
    with pytest.raises(ValueError, match="unknown MoE backend .*valid: auto, torch, triton"):
        kernels.moe_linear(*_good(), backend=backend)
