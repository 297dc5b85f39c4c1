"""A Switch-DiT training step on the Triton backend (under the interpreter on a CPU) equals the torch backend's."""

from __future__ import annotations

import torch
from speed_cases import random_switch


torch.set_num_threads(2)


def test_triton_training_step_matches_torch_backend():
    """A training forward+backward with per-sample routing: the fused masked-input path
    (kernels.moe_mask on the Triton kernels, interpreted on CPU) against the plain-torch one."""
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    t, y = torch.tensor([5, 400, 999]), torch.tensor([0, 2, 1])
    results = []
    for backend in ("torch", "triton"):
        model, _ = random_switch(moe_backend=backend, num_experts=3, top_k=2)
        model.train()
        torch.manual_seed(0)  # the same label dropout draw for both
        out, aux = model(x, t, y, return_aux=True)
        (out.square().mean() + aux["jsd"]).backward()
        results.append((out.detach(), {k: p.grad for k, p in model.named_parameters() if p.grad is not None}))
    (out_t, grads_t), (out_k, grads_k) = results
    torch.testing.assert_close(out_k, out_t, rtol=1e-4, atol=1e-5)
    assert grads_k.keys() == grads_t.keys() and any("experts.weight" in k for k in grads_k)
    for name in grads_t:
        scale = grads_t[name].abs().max().item() + 1e-8
        torch.testing.assert_close(grads_k[name], grads_t[name], rtol=1e-4, atol=1e-4 * scale, msg=lambda m: f"{name}: {m}")
