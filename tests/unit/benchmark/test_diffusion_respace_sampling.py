"""Respacing (ᾱ preserved at kept steps, DiT's step formats), the DDPM/DDIM samplers
(oracle ε recovers x0; exact Gaussian marginals; hand-written DDIM loop) and
classifier-free guidance as DiT batches it."""
import itertools
import math
import random

import numpy as np
import pytest
import torch

from benchmark.diffusion import (SpacedDiffusion, beta_schedule, cfg_model_fn, create_diffusion, ddim_sample,
                                 ddpm_sample, space_timesteps)

DT = torch.float64


def _alpha_bar(name, T):
    acc, out = 1.0, []
    for b in beta_schedule(name, T):
        acc *= 1.0 - b
        out.append(acc)
    return np.array(out)


@pytest.mark.parametrize("spec", ["250", "ddim50", "10,15,20", "", [7, 3], "1000", 100])
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_respaced_alpha_bar_equals_base_at_kept_steps(spec, schedule):
    d = create_diffusion(spec, noise_schedule=schedule)
    base = _alpha_bar(schedule, 1000)
    kept = np.array(sorted(d.timestep_map))
    np.testing.assert_allclose(d.alphas_cumprod, base[kept], rtol=1e-10, atol=1e-15)
    assert list(d.timestep_map) == sorted(d.timestep_map) and d.num_timesteps == len(kept)


def test_step_counts_and_positions():
    assert space_timesteps(1000, "ddim50") == set(range(0, 1000, 20))
    s250 = space_timesteps(1000, "250")
    assert len(s250) == 250 and min(s250) == 0 and max(s250) == 999
    # three sections of 100 steps, each strided to include its two ends
    s = space_timesteps(300, "10,15,20")
    assert len(s) == 45 and {0, 99, 100, 199, 200, 299} <= s
    assert len([k for k in s if k < 100]) == 10 and len([k for k in s if 200 <= k]) == 20
    assert create_diffusion(None).num_timesteps == 1000


def test_full_respacing_reproduces_the_schedule():
    d = create_diffusion("")
    np.testing.assert_allclose(d.betas, beta_schedule("linear", 1000), rtol=1e-9)
    t = torch.tensor([0, 17, 999])
    assert torch.equal(d.model_timesteps(t), t)


def _accumulated_steps(T, counts):
    """Improved DDPM's section respacing, restated: sections of T // n steps (the first T % n one
    longer), each walked from its first step by a fractional stride whose running float sum is
    rounded (round half to even) at every kept step."""
    n = len(counts)
    sizes = [T // n + (1 if i < T % n else 0) for i in range(n)]
    starts = [0, *itertools.accumulate(sizes)][:n]
    kept = []
    for start, size, count in zip(starts, sizes, counts):
        if count > size:
            raise ValueError(f"{count} > {size}")
        stride = 1 if count <= 1 else (size - 1) / (count - 1)
        positions = itertools.accumulate([stride] * (count - 1), initial=0.0) if count else []
        kept.extend(start + round(p) for p in positions)
    return sorted(kept)


def test_every_single_count_matches_the_accumulating_reference():
    for count in range(1, 1001):
        assert sorted(space_timesteps(1000, str(count))) == _accumulated_steps(1000, [count]), count
    # The running sum and j * stride round differently here: 10 * 49.95 is 499.5 but the sum is below it.
    assert 499 in space_timesteps(1000, "21") and 500 not in space_timesteps(1000, "21")


def test_random_multi_section_specs_match_the_accumulating_reference():
    rng = random.Random(20240613)
    checked = refused = 0
    for _ in range(400):
        T = rng.randint(50, 1000)
        n = rng.randint(2, 6)
        size = T // n
        # mostly feasible counts (zeros included), now and then one more than a section holds
        counts = [rng.choice([0, 1, 2, rng.randint(0, size), rng.randint(0, size), size, size + 2])
                  for _ in range(n)]
        if sum(counts) == 0:
            counts[rng.randrange(n)] = 1
        try:
            expected = _accumulated_steps(T, counts)
        except ValueError:
            with pytest.raises(ValueError, match="cannot be strided"):
                space_timesteps(T, counts)
            refused += 1
            continue
        assert sorted(space_timesteps(T, ",".join(map(str, counts)))) == expected, (T, counts)
        assert sorted(space_timesteps(T, counts)) == expected
        checked += 1
    assert checked > 200 and refused > 100  # both branches were exercised


@pytest.mark.parametrize("spec,match", [("ddim7", "ddim7"), ("abc", "ddimN"), ("5,x", "ddimN"), ("11", "11"),
                                        ([0, 0], "positive"), ("ddim", "ddimN")])
def test_bad_respacing(spec, match):
    with pytest.raises(ValueError, match=match):
        space_timesteps(10, spec)


def test_model_is_called_with_original_timesteps():
    d = create_diffusion("ddim10", num_timesteps=100)
    seen = []

    def model_fn(x, t):
        seen.append(t.clone())
        return torch.zeros(x.shape[0], 2 * x.shape[1], dtype=x.dtype)

    d.training_losses(model_fn, torch.zeros(3, 2, dtype=DT), torch.tensor([0, 4, 9]))
    assert seen[0].tolist() == [0, 40, 90] and seen[0].dtype == torch.long
    with pytest.raises(ValueError, match="use_timesteps"):
        SpacedDiffusion(beta_schedule("linear", 10), [3])


def _oracle(x0, alpha_bar_original, learn_sigma=True):
    """True ε for a known x0, indexed by the ORIGINAL-scale timestep the model receives."""
    def model_fn(x_t, t):
        ab = torch.as_tensor(alpha_bar_original[t.numpy()], dtype=DT).reshape(-1, *([1] * (x_t.dim() - 1)))
        eps = (x_t - ab.sqrt() * x0) / (1 - ab).sqrt()
        return torch.cat([eps, torch.zeros_like(eps)], 1) if learn_sigma else eps
    return model_fn


@pytest.mark.parametrize("sampler,kw", [(ddpm_sample, {}), (ddim_sample, {"eta": 0.0}), (ddim_sample, {"eta": 1.0})])
@pytest.mark.parametrize("spec", ["50", "ddim25"])
def test_samplers_with_oracle_recover_x0(sampler, kw, spec):
    d = create_diffusion(spec, noise_schedule="cosine")
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(3, 2, 4, 4, generator=g, dtype=DT) * 2 - 1
    steps = []
    out = sampler(_oracle(x0, _alpha_bar("cosine", 1000)), d, x0.shape, generator=g, dtype=DT,
                  on_step=lambda i, x, x0hat: steps.append(i), **kw)
    torch.testing.assert_close(out, x0, rtol=0, atol=1e-7)
    assert steps == list(range(d.num_timesteps - 1, -1, -1))


def test_ddpm_marginals_are_exact_for_gaussian_data():
    # Data x0 ~ N(0, 1): the Bayes ε-predictor is E[ε|x_t] = √(1−ᾱ_t) x_t, the true reverse
    # kernel is N(√α_t x_t, β_t) ("fixed large"), so x_{t−1} ~ N(0, 1) at every step and the
    # noiseless last step gives Var(x_0) = α_0 = 1 − β_0.
    d = create_diffusion("10", learn_sigma=False)
    ab_orig = _alpha_bar("linear", 1000)

    def bayes_eps(x, t):
        return torch.as_tensor(np.sqrt(1 - ab_orig[t.numpy()]), dtype=DT).reshape(-1, 1) * x

    g = torch.Generator().manual_seed(4)
    n = 20_000
    variances = {}
    x = ddpm_sample(bayes_eps, d, (n, 1), generator=g, dtype=DT,
                    on_step=lambda i, x, _: variances.__setitem__(i, x.var().item()))
    tol = 5 * math.sqrt(2 / n)
    for i in (9, 5, 1):
        assert variances[i] == pytest.approx(1.0, abs=tol)
    assert x.var().item() == pytest.approx(1 - d.betas[0], abs=tol)
    assert abs(x.mean().item()) < 5 / math.sqrt(n)


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_ddim_matches_a_hand_written_loop(eta):
    d = create_diffusion("7,3", num_timesteps=40, learn_sigma=False)
    kept = sorted(space_timesteps(40, "7,3"))
    ab = _alpha_bar("linear", 40)[kept]
    ab_prev = np.append(1.0, ab[:-1])
    c = torch.tensor([[0.3, -0.2]], dtype=DT)

    def model_fn(x, t):  # a non-oracle model: a fixed ε plus a t-dependent term
        return c + 0.01 * t.to(DT).reshape(-1, 1) * x

    xT = torch.randn(5, 2, dtype=DT, generator=torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(8)
    x = xT.clone()
    for i in reversed(range(len(kept))):
        eps = c + 0.01 * kept[i] * x
        x0 = (x - math.sqrt(1 - ab[i]) * eps) / math.sqrt(ab[i])
        # DDIM eq. 16 and eq. 12; one normal draw per step, unused at the last step
        sigma = eta * math.sqrt((1 - ab_prev[i]) / (1 - ab[i]) * (1 - ab[i] / ab_prev[i]))
        z = torch.randn(x.shape, generator=g, dtype=DT)
        x = math.sqrt(ab_prev[i]) * x0 + math.sqrt(1 - ab_prev[i] - sigma ** 2) * eps + (sigma * z if i else 0)
    out = ddim_sample(model_fn, d, xT.shape, noise=xT, eta=eta, generator=torch.Generator().manual_seed(8))
    torch.testing.assert_close(out, x, rtol=1e-10, atol=1e-12)


def test_sampler_errors():
    d = create_diffusion("10", num_timesteps=100)
    with pytest.raises(ValueError, match="eta"):
        ddim_sample(lambda x, t: x, d, (1, 1), eta=1.5)
    with pytest.raises(ValueError, match="noise shape"):
        ddpm_sample(lambda x, t: x, d, (2, 1), noise=torch.zeros(3, 1))


# -- classifier-free guidance -------------------------------------------------------------------
C = 4


def _conditional_model(calls):
    """A deterministic (N, 2C, H, W) model whose output depends on x, t and the label y."""
    def model_fn(x, t, y):
        calls.append(x.clone())
        base = torch.cat([x, -x], 1) * (1 + t.to(x.dtype).reshape(-1, 1, 1, 1) / 1000)
        return base + y.to(x.dtype).reshape(-1, 1, 1, 1) * torch.arange(1, 2 * C + 1, dtype=x.dtype).reshape(1, -1, 1, 1)
    return model_fn


def _inputs():
    g = torch.Generator().manual_seed(9)
    x = torch.randn(6, C, 2, 2, generator=g, dtype=DT)
    y = torch.tensor([3, 5, 7, 0, 0, 0])  # [labels; null labels]
    return x, torch.tensor([10, 10, 10, 10, 10, 10]), y


@pytest.mark.parametrize("channels", [3, None])
def test_cfg_scale_one_is_the_conditional_output(channels):
    x, t, y = _inputs()
    calls = []
    model = _conditional_model(calls)
    out = cfg_model_fn(model, 1.0, guidance_channels=channels)(x, t, y=y)
    half = torch.cat([x[:3], x[:3]])
    torch.testing.assert_close(calls[0], half)  # the second half of x is replaced by the first
    raw = _conditional_model([])(half, t, y)
    g = 3 if channels == 3 else C
    torch.testing.assert_close(out[:3, :g], raw[:3, :g])
    torch.testing.assert_close(out[3:, :g], raw[:3, :g])
    torch.testing.assert_close(out[:, g:], raw[:, g:])


@pytest.mark.parametrize("scale", [1.5, 4.0])
def test_cfg_formula_on_three_channels_only(scale):
    x, t, y = _inputs()
    half = torch.cat([x[:3], x[:3]])
    raw = _conditional_model([])(half, t, y)
    cond, uncond = raw[:3], raw[3:]
    out = cfg_model_fn(_conditional_model([]), scale)(x, t, y=y)
    guided = uncond[:, :3] + scale * (cond[:, :3] - uncond[:, :3])
    torch.testing.assert_close(out[:3, :3], guided)
    torch.testing.assert_close(out[3:, :3], guided)
    # the 4th ε channel and the variance channels are the raw outputs of each half
    torch.testing.assert_close(out[:, 3:], raw[:, 3:])
    assert not torch.allclose(out[:3, 3], cond[:, 3] + (scale - 1) * (cond[:, 3] - uncond[:, 3]))

    all_ch = cfg_model_fn(_conditional_model([]), scale, guidance_channels=None)(x, t, y=y)
    torch.testing.assert_close(all_ch[:3, :C], uncond[:, :C] + scale * (cond[:, :C] - uncond[:, :C]))
    torch.testing.assert_close(all_ch[:, C:], raw[:, C:])


def test_cfg_errors():
    x, t, y = _inputs()
    with pytest.raises(ValueError, match="even"):
        cfg_model_fn(_conditional_model([]), 2.0)(x[:5], t[:5], y=y[:5])
    with pytest.raises(ValueError, match="guidance_channels"):
        cfg_model_fn(_conditional_model([]), 2.0, guidance_channels=0)
    with pytest.raises(ValueError, match="guidance_channels=9"):
        cfg_model_fn(_conditional_model([]), 2.0, guidance_channels=9)(x, t, y=y)


def test_cfg_inside_ddpm_sampling_runs_on_a_spaced_diffusion():
    d = create_diffusion("5", num_timesteps=50)
    x0 = torch.rand(2, C, 2, 2, dtype=DT) * 2 - 1
    oracle = _oracle(torch.cat([x0, x0]), _alpha_bar("linear", 50))
    z = torch.randn(2, C, 2, 2, dtype=DT)
    out = ddpm_sample(cfg_model_fn(lambda x, t, y: oracle(x, t), 4.0, guidance_channels=None), d, (4, C, 2, 2),
                      noise=torch.cat([z, z]), model_kwargs={"y": torch.tensor([1, 2, 0, 0])})
    # cond and uncond outputs agree for this label-blind oracle, so guidance leaves x0 intact
    torch.testing.assert_close(out[:2], x0, rtol=0, atol=1e-7)
