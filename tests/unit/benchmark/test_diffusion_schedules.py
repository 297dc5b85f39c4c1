"""Noise schedules against their closed forms (Ho et al. 2020; improved DDPM eq. 17)."""
import math

import numpy as np
import pytest

from benchmark.diffusion import beta_schedule


def _f(u: float) -> float:
    return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2


@pytest.mark.parametrize("T", [1000, 250, 37])
def test_cosine_alpha_bar_matches_closed_form_where_unclipped(T):
    betas = beta_schedule("cosine", T)
    assert betas.dtype == np.float64 and betas.shape == (T,)
    clipped = betas >= 0.999
    first_clip = int(np.argmax(clipped)) if clipped.any() else T
    alpha_bar = np.cumprod(1.0 - betas)
    expected = np.array([_f((i + 1) / T) / _f(0.0) for i in range(first_clip)])
    np.testing.assert_allclose(alpha_bar[:first_clip], expected, rtol=1e-10, atol=0)
    assert betas.max() <= 0.999 and betas.min() > 0


def test_cosine_clips_the_last_beta():
    # f(1) = cos(π/2)² ≈ 0, so the raw last beta is ≈ 1 and must be clipped.
    assert beta_schedule("cosine", 1000)[-1] == 0.999


@pytest.mark.parametrize("T", [1000, 250, 4000])
def test_linear_endpoints_and_spacing(T):
    betas = beta_schedule("linear", T)
    scale = 1000 / T
    assert betas[0] == pytest.approx(1e-4 * scale, rel=1e-12)
    assert betas[-1] == pytest.approx(0.02 * scale, rel=1e-12)
    np.testing.assert_allclose(np.diff(betas), (0.02 - 1e-4) * scale / (T - 1), rtol=1e-8)


def test_unknown_schedule_names_valid_ones():
    with pytest.raises(ValueError, match=r"'sigmoid'.*cosine.*linear"):
        beta_schedule("sigmoid")


@pytest.mark.parametrize("T", [0, 1, 2.5, "10"])
def test_bad_num_timesteps(T):
    with pytest.raises(ValueError, match="num_timesteps"):
        beta_schedule("linear", T)
