"""Loss weights (constant, Min-SNR, P2) against their formulas and the uncertainty
weighting over timestep clusters (value, analytic gradient, stratified sampling, clusters)."""
import math

import numpy as np
import pytest
import torch

from benchmark.diffusion import (CLUSTERINGS, DEFAULT_LR, UncertaintyWeighting, beta_schedule, parse_loss_weight,
                                 snr)


@pytest.fixture(scope="module")
def alpha_bar():
    return np.cumprod(1.0 - beta_schedule("cosine", 1000))


T_IDX = torch.tensor([0, 1, 100, 250, 500, 750, 999])


def _snr_py(alpha_bar, t):
    return [alpha_bar[i] / (1 - alpha_bar[i]) for i in t.tolist()]


def test_snr(alpha_bar):
    torch.testing.assert_close(snr(alpha_bar, T_IDX), torch.tensor(_snr_py(alpha_bar, T_IDX), dtype=torch.float64))


@pytest.mark.parametrize("spec,formula", [
    ("constant", lambda s: 1.0),
    ("min_snr_5", lambda s: min(s, 5.0) / s),
    ("min_snr_1.5", lambda s: min(s, 1.5) / s),
    ("p2_1_1", lambda s: 1.0 / (1.0 + s)),
    ("p2_0.5_1", lambda s: 1.0 / (1.0 + s) ** 0.5),
    ("p2weight_2_0.1", lambda s: 1.0 / (0.1 + s) ** 2),
])
def test_loss_weights_match_formulas(alpha_bar, spec, formula):
    w = parse_loss_weight(spec)(alpha_bar, T_IDX)
    expected = torch.tensor([formula(s) for s in _snr_py(alpha_bar, T_IDX)], dtype=torch.float64)
    assert w.shape == T_IDX.shape
    torch.testing.assert_close(w, expected, rtol=1e-12, atol=0)


def test_min_snr_is_one_in_the_noisy_regime(alpha_bar):
    w = parse_loss_weight("min_snr_5")(alpha_bar, torch.arange(1000))
    s = snr(alpha_bar, torch.arange(1000))
    assert torch.all(w[s <= 5] == 1) and torch.all(w[s > 5] < 1)


@pytest.mark.parametrize("spec", ["uw", "min_snr_", "min_snr_0", "p2_1", "foo", "p2_a_b", 5])
def test_bad_specs(spec):
    with pytest.raises(ValueError, match="min_snr|K must be"):
        parse_loss_weight(spec)


def test_uw_value_and_gradient_match_the_closed_form():
    uw = UncertaintyWeighting(num_timesteps=1000, num_clusters=8)
    with torch.no_grad():
        uw.loss_scale.copy_(torch.linspace(-1.0, 1.0, 8))
    s = uw.loss_scale.detach().clone()
    # samples only in clusters 0, 2 and 7 (cluster 0 = [0, 125), 2 = [250, 375), 7 = [875, 1000))
    t = torch.tensor([0, 124, 60, 250, 374, 999])
    loss = torch.tensor([1.0, 2.0, 3.0, 4.0, 6.0, 0.5])
    means = {0: 2.0, 2: 5.0, 7: 0.5}
    value = uw(loss, t)
    expected = sum(0.5 * (math.exp(-s[c]) * m / 8 + s[c].item()) for c, m in means.items())
    assert value.item() == pytest.approx(expected, rel=1e-6)
    value.backward()
    grad = torch.zeros(8)
    for c, m in means.items():
        grad[c] = 0.5 * (1 - math.exp(-s[c]) * m / 8)
    torch.testing.assert_close(uw.loss_scale.grad, grad)
    torch.testing.assert_close(uw.weights(), 0.5 * torch.exp(-s))


def test_uw_gradient_reaches_the_per_sample_loss():
    uw = UncertaintyWeighting(num_timesteps=100, num_clusters=4)
    loss = torch.tensor([1.0, 1.0, 1.0], requires_grad=True)
    uw(loss, torch.tensor([0, 1, 99])).backward()
    # d/dL_i of ½ exp(0)·mean_c/C: cluster 0 holds two samples, cluster 3 one
    torch.testing.assert_close(loss.grad, torch.tensor([0.5 / 4 / 2, 0.5 / 4 / 2, 0.5 / 4]))


@pytest.mark.parametrize("batch", [64, 67, 5])
def test_stratified_sampling(batch):
    uw = UncertaintyWeighting(num_timesteps=1000, num_clusters=8)
    g = torch.Generator().manual_seed(0)
    t = uw.sample_timesteps(batch, g)
    assert t.dtype == torch.long and t.shape == (batch,)
    counts = torch.bincount(t // 125, minlength=8).tolist()
    share, extra = divmod(batch, 8)
    assert counts == [share + (1 if c < extra else 0) for c in range(8)]


def test_sampling_is_uniform_within_a_cluster():
    uw = UncertaintyWeighting(num_timesteps=16, num_clusters=2)
    t = uw.sample_timesteps(16_000, torch.Generator().manual_seed(1))
    counts = torch.bincount(t, minlength=16).float()
    assert counts.min() > 1000 * 0.85 and counts.max() < 1000 * 1.15


def test_uniform_cluster_boundaries():
    uw = UncertaintyWeighting(num_timesteps=1000, num_clusters=8)
    t = torch.tensor([0, 124, 125, 249, 250, 874, 875, 999])
    assert uw.cluster_of(t).tolist() == [0, 0, 1, 1, 2, 6, 7, 7]
    # T not divisible by C: edges int(T/C·c) = 0, 3, 6, 10
    uw = UncertaintyWeighting(num_timesteps=10, num_clusters=3)
    assert uw.cluster_of(torch.arange(10)).tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 2]


def test_snr_clusters_have_equal_log_snr_width(alpha_bar):
    uw = UncertaintyWeighting(num_timesteps=1000, num_clusters=4, boundaries="snr", alphas_cumprod=alpha_bar)
    log_snr = np.log(alpha_bar / (1 - alpha_bar))
    width = (log_snr[0] - log_snr[-1]) / 4
    cluster = uw.cluster_of(torch.arange(1000)).numpy()
    for c in range(4):
        band = log_snr[cluster == c]
        hi, lo = log_snr[0] - c * width, log_snr[0] - (c + 1) * width
        assert band.size > 0 and band.max() <= hi + 1e-9 and band.min() >= lo - 1e-9
    assert set(CLUSTERINGS) == {"uniform", "snr"}


def test_uw_errors_and_state_dict(alpha_bar):
    with pytest.raises(ValueError, match="boundaries"):
        UncertaintyWeighting(boundaries="kmeans")
    with pytest.raises(ValueError, match="alphas_cumprod"):
        UncertaintyWeighting(boundaries="snr")
    with pytest.raises(ValueError, match="num_clusters"):
        UncertaintyWeighting(num_timesteps=4, num_clusters=8)
    uw = UncertaintyWeighting()
    with pytest.raises(ValueError, match=r"\[0, 1000\)"):
        uw.cluster_of(torch.tensor([1000]))
    with pytest.raises(ValueError, match="batch"):
        uw.sample_timesteps(0)
    with pytest.raises(ValueError, match="per_sample_loss"):
        uw(torch.ones(3, 2), torch.tensor([0, 1, 2]))
    # official checkpoints store only `loss_scale`
    assert list(uw.state_dict()) == ["loss_scale"]
    assert DEFAULT_LR == 0.025
