"""GaussianDiffusion against closed forms: q(x_t|x_0), the Bayes posterior, the
learned-range variance (improved DDPM eq. 15), the VLB terms and the hybrid loss."""
import math

import numpy as np
import pytest
import torch

from benchmark.diffusion import (GaussianDiffusion, approx_standard_normal_cdf, beta_schedule,
                                 discretized_gaussian_log_likelihood, normal_kl)

T = 100
DT = torch.float64


def _alpha_bar(betas):
    # Independent running product, written out as a loop.
    out, acc = [], 1.0
    for b in betas:
        acc *= 1.0 - b
        out.append(acc)
    return np.array(out)


@pytest.fixture(scope="module")
def betas():
    return beta_schedule("linear", T)


@pytest.fixture(scope="module")
def diffusion(betas):
    return GaussianDiffusion(betas, learn_sigma=True)


def _col(values, like):
    return torch.as_tensor(values, dtype=DT).reshape(-1, *([1] * (like.dim() - 1)))


def _oracle(x0, alpha_bar):
    """Model returning the true ε for the known x0 (and a variance value of 0)."""
    def model_fn(x_t, t):
        ab = _col(alpha_bar[t.numpy()], x_t)
        eps = (x_t - ab.sqrt() * x0) / (1 - ab).sqrt()
        return torch.cat([eps, torch.zeros_like(eps)], dim=1)
    return model_fn


def test_tables_are_float64_and_alpha_bar_is_the_product(diffusion, betas):
    assert diffusion.alphas_cumprod.dtype == np.float64 and diffusion.num_timesteps == T
    np.testing.assert_allclose(diffusion.alphas_cumprod, _alpha_bar(betas), rtol=1e-13)


def test_q_sample_exact_and_monte_carlo(diffusion, betas):
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(4, 3, 2, 2, generator=g, dtype=DT)
    noise = torch.randn(x0.shape, generator=g, dtype=DT)
    t = torch.tensor([0, 10, 50, 99])
    ab = _alpha_bar(betas)[t.numpy()]
    expected = _col(np.sqrt(ab), x0) * x0 + _col(np.sqrt(1 - ab), x0) * noise
    torch.testing.assert_close(diffusion.q_sample(x0, t, noise), expected, rtol=1e-12, atol=1e-12)

    n = 50_000
    x0 = torch.full((n, 1), 0.7, dtype=DT)
    t = torch.full((n,), 40)
    xt = diffusion.q_sample(x0, t, torch.randn(x0.shape, generator=g, dtype=DT))
    a = _alpha_bar(betas)[40]
    assert xt.mean().item() == pytest.approx(math.sqrt(a) * 0.7, abs=5 * math.sqrt((1 - a) / n))
    assert xt.var().item() == pytest.approx(1 - a, rel=5 * math.sqrt(2 / n))


def test_posterior_matches_bayes_rule_on_gaussians(diffusion, betas):
    g = torch.Generator().manual_seed(1)
    t = torch.tensor([1, 2, 17, 60, 99])
    x0 = torch.randn(5, 2, 3, generator=g, dtype=DT)
    xt = torch.randn(5, 2, 3, generator=g, dtype=DT)
    mean, var, log_var = diffusion.q_posterior_mean_variance(x0, xt, t)
    ab = _alpha_bar(betas)
    for i, ti in enumerate(t.tolist()):
        # prior q(x_{t-1}|x0) = N(√ᾱ_{t-1} x0, 1-ᾱ_{t-1}); likelihood q(x_t|x_{t-1}) = N(√α_t x_{t-1}, β_t)
        prior_var, beta, alpha = 1 - ab[ti - 1], betas[ti], 1 - betas[ti]
        post_var = 1.0 / (1.0 / prior_var + alpha / beta)
        post_mean = post_var * (math.sqrt(ab[ti - 1]) * x0[i] / prior_var + math.sqrt(alpha) * xt[i] / beta)
        torch.testing.assert_close(mean[i], post_mean, rtol=1e-10, atol=1e-12)
        assert torch.allclose(var[i], torch.tensor(post_var, dtype=DT), rtol=1e-10)
        # β̃_t = β_t (1 − ᾱ_{t−1})/(1 − ᾱ_t)
        assert post_var == pytest.approx(beta * (1 - ab[ti - 1]) / (1 - ab[ti]), rel=1e-10)
        assert torch.allclose(log_var[i], torch.tensor(math.log(post_var), dtype=DT), rtol=1e-10)


def test_posterior_at_t0_is_x0_and_log_variance_is_clipped(diffusion):
    x0, xt = torch.randn(2, 3, dtype=DT), torch.randn(2, 3, dtype=DT)
    t = torch.zeros(2, dtype=torch.long)
    mean, var, log_var = diffusion.q_posterior_mean_variance(x0, xt, t)
    torch.testing.assert_close(mean, x0, rtol=1e-12, atol=1e-12)
    assert torch.all(var == 0)
    assert torch.allclose(log_var, torch.tensor(math.log(diffusion.posterior_variance[1]), dtype=DT))


def test_eps_xstart_round_trip(diffusion):
    x0, eps = torch.randn(3, 4, dtype=DT), torch.randn(3, 4, dtype=DT)
    t = torch.tensor([0, 5, 99])
    xt = diffusion.q_sample(x0, t, eps)
    torch.testing.assert_close(diffusion.predict_xstart_from_eps(xt, t, eps), x0, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(diffusion.predict_eps_from_xstart(xt, t, x0), eps, rtol=1e-9, atol=1e-9)


def test_learned_range_interpolates_log_beta_and_log_beta_tilde(diffusion, betas):
    t = torch.tensor([0, 3, 50, 99])
    xt = torch.randn(4, 2, dtype=DT)
    eps = torch.zeros_like(xt)
    ab = _alpha_bar(betas)
    beta_tilde = [betas[1] * (1 - ab[0]) / (1 - ab[1]) if ti == 0 else
                  betas[ti] * (1 - ab[ti - 1]) / (1 - ab[ti]) for ti in t.tolist()]
    for v, w in [(1.0, 1.0), (-1.0, 0.0), (0.0, 0.5), (0.5, 0.75)]:
        out = diffusion.p_mean_variance(torch.cat([eps, torch.full_like(xt, v)], 1), xt, t)
        expected = [w * math.log(betas[ti]) + (1 - w) * math.log(bt) for ti, bt in zip(t.tolist(), beta_tilde)]
        torch.testing.assert_close(out["log_variance"][:, 0], torch.tensor(expected, dtype=DT), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(out["variance"], out["log_variance"].exp())


@pytest.mark.parametrize("sigma_small", [False, True])
def test_fixed_variances(betas, sigma_small):
    d = GaussianDiffusion(betas, learn_sigma=False, sigma_small=sigma_small)
    t = torch.tensor([0, 1, 42])
    xt = torch.randn(3, 2, dtype=DT)
    out = d.p_mean_variance(torch.zeros_like(xt), xt, t)
    ab = _alpha_bar(betas)
    bt1 = betas[1] * (1 - ab[0]) / (1 - ab[1])
    if sigma_small:
        expected = [bt1, bt1, betas[42] * (1 - ab[41]) / (1 - ab[42])]
        # the unclipped variance at t = 0 is 0; only the log is clipped
        expected[0] = 0.0
        torch.testing.assert_close(out["variance"][:, 0], torch.tensor(expected, dtype=DT))
        torch.testing.assert_close(out["log_variance"][0, 0], torch.tensor(math.log(bt1), dtype=DT))
    else:  # "large": β_t, with β̃_1 at t = 0
        expected = [bt1, betas[1], betas[42]]
        torch.testing.assert_close(out["variance"][:, 0], torch.tensor(expected, dtype=DT))
        torch.testing.assert_close(out["log_variance"][:, 0], torch.tensor(expected, dtype=DT).log())


def test_p_mean_variance_with_true_eps_gives_posterior(diffusion, betas):
    x0 = torch.randn(3, 2, 4, dtype=DT)
    t = torch.tensor([1, 30, 99])
    xt = diffusion.q_sample(x0, t, torch.randn_like(x0))
    out = diffusion.p_mean_variance(_oracle(x0, _alpha_bar(betas))(xt, t), xt, t)
    torch.testing.assert_close(out["pred_xstart"], x0, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(out["mean"], diffusion.q_posterior_mean_variance(x0, xt, t)[0], rtol=1e-8, atol=1e-8)
    clipped = diffusion.p_mean_variance(_oracle(3 * x0, _alpha_bar(betas))(xt, t), xt, t, clip_denoised=True)
    assert clipped["pred_xstart"].abs().max() <= 1


def test_normal_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(2)
    m1, m2, lv1, lv2 = (torch.randn(50, generator=g, dtype=DT) for _ in range(4))
    ref = torch.distributions.kl_divergence(torch.distributions.Normal(m1, (0.5 * lv1).exp()),
                                            torch.distributions.Normal(m2, (0.5 * lv2).exp()))
    torch.testing.assert_close(normal_kl(m1, lv1, m2, lv2), ref)
    torch.testing.assert_close(normal_kl(m1, 0.0, m1, 0.0), torch.zeros_like(m1))


def test_approx_cdf_is_close_to_exact():
    x = torch.linspace(-6, 6, 1001, dtype=DT)
    assert (approx_standard_normal_cdf(x) - torch.special.ndtr(x)).abs().max() < 3e-4


def test_discretized_likelihood_sums_to_one_over_the_256_bins():
    x = (torch.arange(256, dtype=DT) / 255) * 2 - 1  # bin centres of 8-bit data in [-1, 1]
    for mean, log_scale in [(0.1, -2.0), (-0.7, -4.0), (0.0, 0.5)]:
        lp = discretized_gaussian_log_likelihood(x, means=torch.full_like(x, mean), log_scales=torch.full_like(x, log_scale))
        assert lp.exp().sum().item() == pytest.approx(1.0, abs=1e-9)
        # an interior bin: Φ((x−μ+1/255)/σ) − Φ((x−μ−1/255)/σ) with the exact CDF
        sigma = math.exp(log_scale)
        k = 128
        exact = torch.special.ndtr((x[k] - mean + 1 / 255) / sigma) - torch.special.ndtr((x[k] - mean - 1 / 255) / sigma)
        assert lp[k].exp().item() == pytest.approx(exact.item(), abs=5e-4)


def test_training_losses_oracle_mse_is_zero_and_vb_is_a_valid_kl(diffusion, betas):
    g = torch.Generator().manual_seed(3)
    x0 = torch.rand(6, 2, 3, 3, generator=g, dtype=DT) * 2 - 1
    noise = torch.randn(x0.shape, generator=g, dtype=DT)
    t = torch.tensor([0, 1, 5, 40, 80, 99])
    var_v = torch.nn.Parameter(torch.tensor(0.3, dtype=DT))
    shift = torch.nn.Parameter(torch.tensor(0.0, dtype=DT))
    oracle = _oracle(x0, _alpha_bar(betas))

    def model_fn(x_t, t_model):
        eps = oracle(x_t, t_model)[:, :2]
        return torch.cat([eps + shift, var_v.expand_as(eps)], dim=1)

    terms = diffusion.training_losses(model_fn, x0, t, noise=noise)
    assert torch.all(terms["mse"].abs() < 1e-18)
    assert torch.all(terms["vb"] >= 0)
    torch.testing.assert_close(terms["loss"], terms["mse"] + terms["vb"])

    # Independent check of the KL terms (t > 0): exact mean, log-variance interpolated with v = 0.3.
    ab = _alpha_bar(betas)
    w = (0.3 + 1) / 2
    for i, ti in enumerate(t.tolist()[1:], start=1):
        bt = betas[ti] * (1 - ab[ti - 1]) / (1 - ab[ti])
        lv_model = w * math.log(betas[ti]) + (1 - w) * math.log(bt)
        kl = 0.5 * (lv_model - math.log(bt) + math.exp(math.log(bt) - lv_model) - 1)
        assert terms["vb"][i].item() == pytest.approx(kl / math.log(2), rel=1e-9)

    # The VLB only trains the variance: its gradient must not reach the mean.
    terms["vb"].sum().backward()
    assert shift.grad.item() == 0.0 and var_v.grad.item() != 0.0
    shift.grad = None
    diffusion.training_losses(model_fn, x0, t, noise=noise)["mse"].sum().backward()
    assert shift.grad is not None  # the mse term does train the mean


def test_training_losses_decoder_nll_at_t0(diffusion):
    x0 = torch.tensor([[-1.0, -0.2, 0.4, 1.0]], dtype=DT)
    noise = torch.randn_like(x0)
    t = torch.zeros(1, dtype=torch.long)
    out = torch.cat([torch.zeros_like(x0), torch.full_like(x0, -1.0)], 1)
    terms = diffusion.training_losses(lambda x, tt: out, x0, t, noise=noise)
    x_t = diffusion.q_sample(x0, t, noise)
    p = diffusion.p_mean_variance(out, x_t, t)
    nll = -discretized_gaussian_log_likelihood(x0, means=p["mean"], log_scales=0.5 * p["log_variance"])
    assert terms["vb"].item() == pytest.approx(nll.mean().item() / math.log(2), rel=1e-12)
    assert terms["mse"].item() == pytest.approx(((noise - 0) ** 2).mean().item(), rel=1e-12)


def test_mse_weight_tensor_or_callable(diffusion):
    x0, noise = torch.randn(3, 2, dtype=DT), torch.randn(3, 2, dtype=DT)
    t = torch.tensor([4, 8, 16])
    out = torch.zeros(3, 4, dtype=DT)
    base = diffusion.training_losses(lambda x, tt: out, x0, t, noise=noise)
    w = torch.tensor([0.5, 2.0, 3.0], dtype=DT)
    weighted = diffusion.training_losses(lambda x, tt: out, x0, t, noise=noise, mse_weight=w)
    torch.testing.assert_close(weighted["mse"], base["mse"] * w)
    by_fn = diffusion.training_losses(lambda x, tt: out, x0, t, noise=noise,
                                      mse_weight=lambda ab, tt: torch.as_tensor(ab)[tt])
    torch.testing.assert_close(by_fn["mse"], base["mse"] * torch.as_tensor(diffusion.alphas_cumprod)[t])
    with pytest.raises(ValueError, match="mse_weight"):
        diffusion.training_losses(lambda x, tt: out, x0, t, noise=noise, mse_weight=torch.ones(2))


def test_fixed_variance_loss_has_no_vb_and_extra_is_passed_through(betas):
    d = GaussianDiffusion(betas, learn_sigma=False)
    x0 = torch.randn(2, 3, dtype=DT)
    terms = d.training_losses(lambda x, t: (torch.zeros_like(x), {"aux": 1.5}), x0, torch.tensor([1, 2]))
    assert "vb" not in terms and terms["extra"] == {"aux": 1.5}
    torch.testing.assert_close(terms["loss"], terms["mse"])


def test_rescaled_vb(betas):
    d1 = GaussianDiffusion(betas[:50], rescale_learned_sigmas=False)
    d2 = GaussianDiffusion(betas[:50], rescale_learned_sigmas=True)
    x0, noise, t = torch.randn(2, 3, dtype=DT), torch.randn(2, 3, dtype=DT), torch.tensor([3, 9])
    out = torch.randn(2, 6, dtype=DT).clamp(-1, 1)
    v1 = d1.training_losses(lambda x, tt: out, x0, t, noise=noise)["vb"]
    v2 = d2.training_losses(lambda x, tt: out, x0, t, noise=noise)["vb"]
    torch.testing.assert_close(v2, v1 * 50 / 1000)


def test_bad_inputs(diffusion, betas):
    x = torch.randn(2, 3, 4)
    with pytest.raises(TypeError, match="integer"):
        diffusion.q_sample(x, torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match=r"\[0, 100\)"):
        diffusion.q_sample(x, torch.tensor([0, 100]))
    with pytest.raises(ValueError, match="shape"):
        diffusion.q_sample(x, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="2C"):
        diffusion.p_mean_variance(torch.randn(2, 3, 4), x, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="betas"):
        GaussianDiffusion(np.array([0.1, 0.0, 0.2]))
    with pytest.raises(ValueError, match="betas"):
        GaussianDiffusion(np.array([0.1]))
