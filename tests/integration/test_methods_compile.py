"""torch.compile of every method at the debug size runs on the CPU and matches eager mode.

The eval-mode forward (what sampling compiles) runs in the default suite; the train-mode
forward + backward comparison is marked slow (Inductor's CPU compilation of the backward takes
minutes on a 2-core machine) and runs with ``pytest -m slow``.
"""
from __future__ import annotations

import pytest
import torch

import methods
from reference_models import random_state_dict

torch.set_num_threads(2)


def _loss_and_grads(fn, model, x, t, y):
    model.zero_grad()
    torch.manual_seed(0)  # the Switch-DiT prior matching shuffles columns with the global generator
    out, aux = fn(x, t, y, return_aux=True)
    loss = out.square().mean() + sum(aux.values(), torch.zeros(()))
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _model(method):
    torch._dynamo.reset()
    # No label dropout, so train-mode passes are deterministic and comparable.
    model = methods.build_model(method, "debug", input_size=8, in_channels=1, num_classes=3, class_dropout_prob=0.0)
    sd = random_state_dict(model.state_dict(), seed=9)
    sd["pos_embed"] = model.pos_embed.detach().clone()
    model.load_state_dict(sd)
    x, t, y = torch.randn(2, 1, 8, 8), torch.tensor([7.0, 901.0]), torch.tensor([0, 2])
    return model, x, t, y


@pytest.mark.parametrize("method", ["dit", "dtr", "switch_dit"])
def test_compiled_eval_forward_matches_eager(method):
    model, x, t, y = _model(method)
    compiled = torch.compile(model)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(compiled(x, t, y), model(x, t, y), atol=1e-4, rtol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["dit", "dtr", "switch_dit"])
def test_compiled_forward_and_backward_match_eager(method):
    model, x, t, y = _model(method)
    compiled = torch.compile(model)
    model.train()
    loss_c, grads_c = _loss_and_grads(compiled, model, x, t, y)
    loss_e, grads_e = _loss_and_grads(model, model, x, t, y)
    torch.testing.assert_close(loss_c, loss_e, atol=1e-5, rtol=1e-4)
    assert set(grads_c) == set(grads_e) and len(grads_e) > 0
    for name in grads_e:
        torch.testing.assert_close(grads_c[name], grads_e[name], atol=1e-4, rtol=1e-3, msg=lambda m: f"{name}: {m}")
