"""Switch-DiT: expert path vs a naive loop, prior matching, JSD, suite checkpoints, options, diagnostics
(official checkpoints: tests/integration/test_switch_dit_official_checkpoints.py)."""

from __future__ import annotations
import itertools
import numpy as np
import pytest
import torch
from speed_cases import random_switch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import jensenshannon
import methods
import methods.switch_dit as switch_module
from methods.prior import jsd_loss, match_columns
from reference_models import random_state_dict, ref_dtr_table

torch.set_num_threads(2)


# ------------------------------------------------------------------ expert path
@pytest.mark.parametrize("backend", ["torch", "auto"])
def test_block_mask_matches_naive_per_sample_loop(backend):
    model, sd = random_switch(moe_backend=backend, num_experts=4, top_k=2)
    t = torch.tensor([0.0, 333.0, 999.0])
    h = torch.randn(3, 16, 96)
    with torch.no_grad():
        routing = model.route(t, model.t_embedder(t), False)
        temb = model.t_embedder(t)
        for i in range(model.depth):
            got = 1 + model.block_mask_delta(i, h, routing)
            wg, bg = sd[f"routers.{i}.gate.1.weight"], sd[f"routers.{i}.gate.1.bias"]
            w, b = sd[f"routers.{i}.experts.weight"], sd[f"routers.{i}.experts.bias"]
            want = torch.ones_like(h)
            for n in range(3):
                probs = torch.softmax(F.silu(temb[n]) @ wg.T + bg, dim=0)
                for e in torch.argsort(probs, descending=True)[:2].tolist():  # top-2, gates not renormalised
                    want[n] += probs[e] * (h[n] @ w[e] + b[e])
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_moe_linear_shared_matches_naive_loop():
    from kernels.moe_torch import expert_coefficients, moe_linear_shared

    gen = torch.Generator().manual_seed(3)
    n, seq, d_in, d_out, e = 3, 5, 6, 7, 4
    x = torch.randn(n, seq, d_in, generator=gen, dtype=torch.float64)
    w = torch.randn(e, d_in, d_out, generator=gen, dtype=torch.float64)
    b = torch.randn(e, d_out, generator=gen, dtype=torch.float64)
    idx, g = torch.tensor([2, 0, 2]), torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)  # expert 2 twice: both gates count
    want = torch.zeros(n, seq, d_out, dtype=torch.float64)
    for s in range(n):
        for j in range(3):
            want[s] += g[j] * (x[s] @ w[idx[j]] + b[idx[j]])
    coef = expert_coefficients(idx[None], g[None], e)[0]
    torch.testing.assert_close(coef, torch.tensor([0.3, 0.0, 0.7, 0.0], dtype=torch.float64))
    torch.testing.assert_close(moe_linear_shared(x, w, b, coef), want, atol=1e-12, rtol=1e-12)
    # a transposed (non-contiguous) input gives the same rows
    xt = x.transpose(1, 2).contiguous().transpose(1, 2)
    torch.testing.assert_close(moe_linear_shared(xt, w, b, coef), want, atol=1e-12, rtol=1e-12)


def test_shared_timestep_detection():
    assert switch_module.shared_timestep(torch.full((4,), 500))
    assert switch_module.shared_timestep(torch.tensor(7.0).expand(3))  # stride 0: equal by construction
    assert switch_module.shared_timestep(torch.tensor([9]))
    assert not switch_module.shared_timestep(torch.tensor([500, 500, 499]))
    assert not switch_module.shared_timestep(torch.tensor([500.0, 500.5]))


def _loss_and_grads(model, x, t, y):
    for p in model.parameters():
        p.grad = None
    out = model(x, t, y)
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("t_value", [0, 250, 731, 999])
def test_same_timestep_fast_path_equals_general_path(monkeypatch, t_value):
    model, _ = random_switch(num_experts=4, top_k=2)
    x, y = torch.randn(3, 1, 8, 8), torch.tensor([0, 2, 1])
    t = torch.full((3,), t_value)
    assert model.route(t, model.t_embedder(t), False).coef is not None  # the fast path is taken
    fast, fast_grads = _loss_and_grads(model, x, t, y)
    monkeypatch.setattr(switch_module, "shared_timestep", lambda t: False)
    assert model.route(t, model.t_embedder(t), False).coef is None
    slow, slow_grads = _loss_and_grads(model, x, t, y)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)
    assert fast_grads.keys() == slow_grads.keys()
    for name in fast_grads:  # experts, gates and the timestep embedder get the same gradients
        torch.testing.assert_close(fast_grads[name], slow_grads[name], atol=1e-5, rtol=1e-4, msg=name)


def test_zero_experts_reduce_to_dit():
    model = methods.build_model("switch_dit", "debug", input_size=8, in_channels=1, num_classes=3).eval()
    dit = methods.build_model("dit", "debug", input_size=8, in_channels=1, num_classes=3).eval()
    sd = random_state_dict(dit.state_dict(), seed=4)
    sd["pos_embed"] = dit.pos_embed.detach().clone()
    dit.load_state_dict(sd)
    model.load_state_dict(sd, strict=False)  # routers keep their (zero-expert) initialisation
    assert all(torch.count_nonzero(r.experts.weight) == 0 for r in model.routers)
    x, t, y = torch.randn(2, 1, 8, 8), torch.tensor([4, 870]), torch.tensor([0, 2])
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, y), dit(x, t, y), atol=1e-6, rtol=1e-6)


def test_timestep_is_an_argument_per_sample():
    model, _ = random_switch()
    x, t, y = torch.randn(2, 1, 8, 8), torch.tensor([3, 980]), torch.tensor([0, 2])
    with torch.no_grad():
        both = model(x, t, y)
        sep = torch.cat([model(x[:1], t[:1], y[:1]), model(x[1:], t[1:], y[1:])])
    torch.testing.assert_close(both, sep, atol=1e-5, rtol=1e-5)


def test_eval_gates_only_the_batch_timesteps():
    model, _ = random_switch()
    seen = []
    model.t_embedder.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].shape[0]))
    x, t, y = torch.randn(2, 1, 8, 8), torch.tensor([3, 980]), torch.tensor([0, 2])
    with torch.no_grad():
        model(x, t, y)
    assert seen == [2]
    model.train()
    model(x, t, y)
    assert seen == [2, 2]
    model(x, t, y, return_aux=True)  # the prior matching needs every timestep's assignment
    assert seen == [2, 2, 2, 1000]


# ------------------------------------------------------------------ prior: JSD and matching
def test_jsd_matches_scipy_and_hand_formula():
    gen = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(5, 12, generator=gen), 1).double()
    q = torch.softmax(torch.randn(5, 12, generator=gen), 1).double()
    scipy_jsd = np.mean([jensenshannon(p[i].numpy(), q[i].numpy()) ** 2 for i in range(5)])
    assert abs(jsd_loss(p, q).item() - scipy_jsd) < 1e-4  # the 1e-6 inside the logs
    m = (p + q) / 2
    hand = 0.5 * ((p * ((p + 1e-6).log() - (m + 1e-6).log())).sum(1) + (q * ((q + 1e-6).log() - (m + 1e-6).log())).sum(1))
    assert abs(jsd_loss(p, q).item() - hand.mean().item()) < 1e-12
    onehot = torch.eye(12, dtype=torch.float64)[:5]
    assert torch.isfinite(jsd_loss(p, onehot)) and jsd_loss(onehot, onehot).abs() < 1e-5
    with pytest.raises(ValueError, match=r"p has shape \(5, 12\) but q has shape \(5, 11\)"):
        jsd_loss(p, q[:, :11])


def _cost(a, b, perm):
    return float((a - b[:, perm]).abs().sum())


@pytest.mark.parametrize("seed", range(6))
def test_matching_is_optimal_against_brute_force(seed):
    gen = torch.Generator().manual_seed(seed)
    units = 6
    a = (torch.rand(30, units, generator=gen) < 0.4).float()
    if seed % 2:  # prior equal to a column permutation of the assignment: zero-cost matching exists
        b = a[:, torch.randperm(units, generator=gen)]
    else:
        b = (torch.rand(30, units, generator=gen) < 0.5).float()
    perm = match_columns(a, b, generator=gen)
    assert sorted(perm.tolist()) == list(range(units))
    best = min(_cost(a, b, list(p)) for p in itertools.permutations(range(units)))
    assert _cost(a, b, perm) == best
    if seed % 2:
        assert best == 0


def test_matching_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"assign \(4, 3\) and prior \(4, 2\) must both be \(T, U\)"):
        match_columns(torch.zeros(4, 3), torch.zeros(4, 2))


def test_aux_loss_is_weighted_jsd_against_matched_prior(monkeypatch):
    model, sd = random_switch(w_jsd=2.5)
    model.train()
    recorded = []
    real = switch_module.match_columns
    monkeypatch.setattr(switch_module, "match_columns", lambda a, p: recorded.append(real(a, p)) or recorded[-1])
    x, t, y = torch.randn(3, 1, 8, 8), torch.tensor([0, 412, 999]), torch.tensor([0, 1, 2])
    _, aux = model(x, t, y, return_aux=True)
    assert set(aux) == {"jsd"}
    perm = recorded[0]

    depth, e, k = model.depth, 3, 2
    with torch.no_grad():
        temb_all = model.t_embedder(torch.arange(1000))
        probs_all = [torch.softmax(F.silu(temb_all) @ sd[f"routers.{i}.gate.1.weight"].T + sd[f"routers.{i}.gate.1.bias"], 1) for i in range(depth)]
    assign = torch.cat([torch.zeros(1000, e).scatter(1, p.topk(k, 1).indices, 1.0) for p in probs_all], 1)
    prior = ref_dtr_table(1000, depth * e, 4.0, k / e)
    # the matching the model used is a minimum-cost one
    rows, cols = linear_sum_assignment((assign[:, :, None] - prior[:, None, :]).abs().sum(0).numpy())
    assert _cost(assign, prior, perm) == _cost(assign, prior, torch.as_tensor(cols)[np.argsort(rows)])
    # and the loss is w · JSD(probs/depth, matched prior rows / their sum)
    p = torch.cat([probs_all[i][t] for i in range(depth)], 1) / depth
    q = prior[t][:, perm]
    q = q / q.sum(1, keepdim=True)
    m = (p + q) / 2
    jsd = 0.5 * ((p * ((p + 1e-6).log() - (m + 1e-6).log())).sum(1) + (q * ((q + 1e-6).log() - (m + 1e-6).log())).sum(1))
    torch.testing.assert_close(aux["jsd"].detach(), 2.5 * jsd.mean(), atol=1e-6, rtol=1e-5)
    # the JSD trains the gates (and through them the timestep embedder), not the experts
    aux["jsd"].backward()
    assert model.routers[0].gate[1].weight.grad.abs().sum() > 0
    assert model.routers[0].experts.weight.grad is None or model.routers[0].experts.weight.grad.abs().sum() == 0


def test_zero_weight_skips_the_prior():
    model, _ = random_switch(w_jsd=0.0)
    _, aux = model(torch.randn(2, 1, 8, 8), torch.tensor([1, 2]), torch.tensor([0, 1]), return_aux=True)
    assert aux["jsd"].item() == 0.0


def test_suite_round_trip(tmp_path):
    model, _ = random_switch(num_experts=4, top_k=3, w_jsd=0.5)
    path = methods.save_checkpoint(tmp_path / "sw.pt", model, ema=model, step=3)
    loaded = methods.load_checkpoint(path)
    assert loaded.build_kwargs == model.build_kwargs
    x, t, y = torch.randn(2, 1, 8, 8), torch.tensor([1, 800]), torch.tensor([0, 2])
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, t, y), model(x, t, y), atol=0, rtol=0)
    with pytest.raises(ValueError, match="num_experts=3 contradicts the checkpoint's num_experts=4"):
        methods.load_checkpoint(path, num_experts=3)
    # a build record that disagrees with the stored tensors names the tensor and both shapes
    raw = methods.read_checkpoint(path)
    raw["build"]["method_options"].update(num_experts=3, top_k=2)
    torch.save(raw, path)
    with pytest.raises(ValueError, match=r"shape mismatch loading switch_dit-debug/2 .*routers.0.experts.weight: checkpoint \(4, 96, 96\) vs model \(3, 96, 96\)"):
        methods.load_checkpoint(path)


# ------------------------------------------------------------------ options and diagnostics
@pytest.mark.parametrize(
    "opts,needle",
    [
        ({"top_k": 4}, "switch_dit option top_k=4 is invalid: must be <= num_experts=3"),
        ({"top_k": 0}, "switch_dit option top_k=0 is invalid"),
        ({"w_jsd": -0.1}, "switch_dit option w_jsd=-0.1 is invalid: must be >= 0"),
        ({"prior_alpha": 0.0}, "switch_dit option prior_alpha=0.0 is invalid: must be > 0"),
        ({"moe_backend": "cuda"}, "switch_dit option moe_backend='cuda' is invalid: must be one of ['auto', 'triton', 'torch']"),
        ({"top_k": 1.5}, "switch_dit option top_k=1.5 must be an integer"),
        ({"experts": 3}, "unknown option(s) ['experts'] for method 'switch_dit'"),
    ],
)
def test_validate_options(opts, needle):
    with pytest.raises(ValueError) as err:
        methods.validate_options("switch_dit", **opts)
    assert needle in str(err.value)


def test_diagnostics(tmp_path):
    model, _ = random_switch()
    out = model.diagnostics(tmp_path)
    assert set(out) == {"task_expert_map", "task_affinity"}
    for path in out.values():
        assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assign = model.task_expert_assignment()
    assert assign.shape == (1000, 4, 3) and torch.all(assign.sum(2) == 2)
