"""metrics.frechet against its peers (scipy's sqrtm formula, torchmetrics) and closed forms."""

import warnings

import numpy as np
import pytest
import scipy.linalg
import torch

from metrics.frechet import (
    FrechetBiasWarning,
    frechet_distance,
    frechet_distance_from_stats,
    frechet_distance_in_sample_space,
    gaussian_stats,
    trace_sqrt_product,
)


def _correlated(rng, n, d, shift=0.0, scale=1.0):
    """Samples with a full, non-diagonal covariance."""
    mix = rng.standard_normal((d, d)) / np.sqrt(d)
    return (rng.standard_normal((n, d)) @ mix) * scale + shift


def _classic(mu1, s1, mu2, s2):
    """The formula as pytorch-fid / StyleGAN-V write it: sqrtm of the non-symmetric product."""
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean).real)


@pytest.fixture(scope="module")
def feats():
    rng = np.random.default_rng(0)
    d, n = 64, 600
    return _correlated(rng, n, d), _correlated(rng, n + 50, d, shift=0.3, scale=1.2)


def test_equals_scipy_sqrtm_classic_formula(feats):
    a, b = feats
    mu1, s1, _ = gaussian_stats(a)
    mu2, s2, _ = gaussian_stats(b)
    ours = frechet_distance(a, b)
    assert ours.value == pytest.approx(_classic(mu1, s1, mu2, s2), rel=1e-6)
    assert (ours.n_real, ours.n_gen, ours.dim, ours.n) == (600, 650, 64, 600)


def test_equals_torchmetrics(feats):
    from torchmetrics.image.fid import _compute_fid

    a, b = feats
    mu1, s1, _ = gaussian_stats(a)
    mu2, s2, _ = gaussian_stats(b)
    theirs = _compute_fid(*(torch.from_numpy(x) for x in (mu1, s1, mu2, s2))).item()
    assert frechet_distance(a, b).value == pytest.approx(theirs, rel=1e-6)


def test_covariance_matches_numpy_unbiased(feats):
    a, _ = feats
    mu, s, n = gaussian_stats(a)
    np.testing.assert_allclose(s, np.cov(a, rowvar=False), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(mu, a.mean(0))
    assert n == len(a)


def test_identical_sets_give_zero(feats):
    a, _ = feats
    r = frechet_distance(a, a.copy())
    assert r.value == pytest.approx(0.0, abs=1e-9 * np.trace(np.cov(a, rowvar=False)))


def test_symmetric(feats):
    a, b = feats
    assert frechet_distance(a, b).value == pytest.approx(frechet_distance(b, a).value, rel=1e-10)


def test_diagonal_gaussians_closed_form():
    # for diagonal covariances FD = |mu1 - mu2|^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2
    rng = np.random.default_rng(1)
    d = 32
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    va, vb = rng.uniform(0.1, 3.0, d), rng.uniform(0.1, 3.0, d)
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(va) - np.sqrt(vb)) ** 2).sum()
    r = frechet_distance_from_stats(mu1, np.diag(va), 1000, mu2, np.diag(vb), 1000)
    assert r.value == pytest.approx(expected, rel=1e-10)


def test_means_only_differ():
    rng = np.random.default_rng(2)
    s = np.cov(_correlated(rng, 500, 16), rowvar=False)
    mu = rng.standard_normal(16)
    r = frechet_distance_from_stats(mu, s, 500, mu + 2.0, s, 500)
    assert r.value == pytest.approx(4.0 * 16, rel=1e-8)


def test_rank_deficient_warns_and_matches_exact_low_rank_value():
    """N < d: the warning fires, and the value equals the exact one. With S1 = A A^T, S2 = B B^T
    the cross term tr sqrt(S1 S2) is the nuclear norm of B^T A (a small N x N SVD): no sqrtm of
    a singular matrix involved. scipy's sqrtm and torchmetrics' eigvals carry errors here."""
    rng = np.random.default_rng(3)
    d, n = 256, 40
    a, b = _correlated(rng, n, d), _correlated(rng, n, d, shift=0.1)
    with pytest.warns(FrechetBiasWarning, match="N=40 samples in d=256"):
        r = frechet_distance(a, b)
    A = (a - a.mean(0)).T / np.sqrt(n - 1)
    B = (b - b.mean(0)).T / np.sqrt(n - 1)
    nuclear = np.linalg.svd(B.T @ A, compute_uv=False).sum()
    exact = ((a.mean(0) - b.mean(0)) ** 2).sum() + (A * A).sum() + (B * B).sum() - 2 * nuclear
    assert r.value == pytest.approx(exact, rel=1e-9)


@pytest.mark.parametrize("n1,n2", [(40, 40), (30, 55), (2, 9)])
def test_sample_space_form_equals_the_d_space_form(n1, n2):
    """The N_1 x N_2 route that frechet_distance takes when N < d equals the pivoted-Cholesky route
    over the d x d covariances, also with repeated rows (a bootstrap resample) and unequal N."""
    rng = np.random.default_rng(4)
    d = 128
    a, b = _correlated(rng, n1, d), _correlated(rng, n2, d, shift=0.2, scale=0.7)
    a[-1] = a[0]  # a video drawn twice
    with pytest.warns(FrechetBiasWarning):
        fast = frechet_distance(a, b)
        slow = frechet_distance_from_stats(*gaussian_stats(a), *gaussian_stats(b))
        direct = frechet_distance_in_sample_space(a, b)
    assert fast.value == pytest.approx(slow.value, rel=1e-9)
    assert direct == fast
    assert (fast.n_real, fast.n_gen, fast.dim) == (n1, n2, d)


def test_no_warning_when_enough_samples(feats):
    a, b = feats
    with warnings.catch_warnings():
        warnings.simplefilter("error", FrechetBiasWarning)
        frechet_distance(a, b)


def test_trace_sqrt_product_of_zero_matrix():
    assert trace_sqrt_product(np.zeros((4, 4)), np.eye(4)) == 0.0


def test_bad_inputs():
    with pytest.raises(ValueError, match="at least 2"):
        frechet_distance(np.ones((1, 4)), np.ones((3, 4)))
    with pytest.raises(ValueError, match="feature dims differ"):
        frechet_distance(np.random.rand(5, 4), np.random.rand(5, 3))
    with pytest.raises(ValueError, match=r"\[N, d\]"):
        frechet_distance(np.ones(5), np.ones(5))
