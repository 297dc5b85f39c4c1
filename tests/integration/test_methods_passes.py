"""benchmark.speed.passes: elementwise passes over the activations per training step (routing overhead).

The bounds are the fused block's counts; the unfused block (r + (1 − m)·x taken apart by
autograd) made 6 passes per DTR block and 18 per Switch-DiT block over DiT's, so a change
that undoes the fusion fails here.
"""
import pytest
import torch

from benchmark.speed.passes import _PassCounter, step_passes

torch.set_num_threads(2)


def test_counter_counts_activation_sized_elementwise_ops_only():
    x, y = torch.randn(4, 8), torch.randn(4, 8)
    w = torch.randn(8, 8)
    with _PassCounter(32) as counter:
        z = torch.addcmul(x, x, y)  # one pass
        z = z.bfloat16().float()  # two casts
        _ = z @ w  # a matmul is not a pass
        _ = z.sum(0) * 2  # the product reads an 8-element tensor: not activation-sized
    assert dict(counter.counts) == {"addcmul": 1, "_to_copy": 2}


@pytest.mark.parametrize("method, options, bound", [
    ("dtr", {}, 3),
    ("switch_dit", {"moe_backend": "triton"}, 4),
    ("switch_dit", {"moe_backend": "torch"}, 7),
])
def test_routed_blocks_add_few_passes_over_dit(method, options, bound):
    base, depth = step_passes("dit", "debug", batch=2, input_size=8)
    counts, _ = step_passes(method, "debug", batch=2, input_size=8, **options)
    extra = (sum(counts.values()) - sum(base.values())) / depth
    assert 0 < extra <= bound, (extra, dict(counts), dict(base))
