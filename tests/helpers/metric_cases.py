"""Shared pieces of the bootstrap tests: a one-thread BLAS fixture and a brute-force manifold membership."""
import numpy as np
import pytest


@pytest.fixture(scope="module", autouse=True)
def single_threaded_blas():
    """numpy's BLAS threads spin after each call and starve torch's on a 2-core machine; the checks here are small."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        yield


def brute_force_membership(gen, real, k):
    """float64 distances; radius = distance to the k-th nearest *other* member of the same set."""
    def dists(a, b):
        return np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))

    r_gen = np.sort(dists(gen, gen), axis=1)[:, k]
    r_real = np.sort(dists(real, real), axis=1)[:, k]
    inside = (dists(gen, real) <= r_real[None, :]).any(axis=1)      # generated i in the real manifold
    covered = dists(real, gen) <= r_gen[None, :]                     # real r in generated j's ball
    return inside, covered
