"""FD, KL and IS (av-benchmark conventions) against closed forms and hand-computed values."""

import math

import numpy as np
import pytest
import torch

from foley_toolkit.evaluation.distribution_metrics import (
    frechet_distance,
    frechet_distance_from_statistics,
    gaussian_statistics,
    inception_score,
    kl_divergence,
)


def _closed_form_fd(mu1, sigma1, mu2, sigma2):
    # The textbook / av-benchmark evaluation: principal matrix square root of the product by scipy.
    from scipy import linalg

    covmean = linalg.sqrtm(sigma1 @ sigma2).real
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def test_fd_of_a_set_with_itself_is_zero():
    features = np.random.default_rng(0).normal(size=(200, 16))
    assert abs(frechet_distance(features, features)) < 1e-8
    # and against a shifted copy it is exactly the squared shift (same covariance)
    shift = np.arange(16) * 0.1
    assert frechet_distance(features + shift, features) == pytest.approx(float(shift @ shift), abs=1e-8)


def test_fd_between_two_gaussian_sets_equals_the_closed_form():
    rng = np.random.default_rng(1)
    dim = 8
    a = rng.normal(size=(dim, dim))
    b = rng.normal(size=(dim, dim))
    generated = rng.normal(size=(500, dim)) @ a + 1.0
    reference = rng.normal(size=(400, dim)) @ b - 0.5
    mu1, sigma1 = generated.mean(0), np.cov(generated, rowvar=False)
    mu2, sigma2 = reference.mean(0), np.cov(reference, rowvar=False)
    expected = _closed_form_fd(mu1, sigma1, mu2, sigma2)
    assert expected > 1.0
    assert frechet_distance(generated, reference) == pytest.approx(expected, abs=1e-6)
    assert frechet_distance_from_statistics(mu1, sigma1, mu2, sigma2) == pytest.approx(expected, abs=1e-6)
    assert frechet_distance(torch.from_numpy(generated).float(), reference) == pytest.approx(expected, rel=1e-5)


def test_fd_with_fewer_clips_than_dimensions():
    # Rank-deficient covariances (the usual case for 2048-d embeddings): the clip-space trace equals the
    # eigen-decomposition of the full covariances, and a set against itself is still 0.
    rng = np.random.default_rng(2)
    generated = rng.normal(size=(12, 64)) * np.linspace(0.5, 2.0, 64)
    reference = rng.normal(size=(17, 64)) + 0.3
    full = frechet_distance_from_statistics(*gaussian_statistics(generated), *gaussian_statistics(reference))
    assert frechet_distance(generated, reference) == pytest.approx(full, rel=1e-7)  # sqrt of rounding-level eigenvalues
    assert abs(frechet_distance(generated, generated)) < 1e-8
    mu, sigma = gaussian_statistics(generated)
    assert abs(frechet_distance_from_statistics(mu, sigma, mu, sigma)) < 1e-7 * np.trace(sigma)


def test_fd_of_diagonal_gaussians():
    # Diagonal covariances commute: FD = |mu1 - mu2|^2 + sum (sqrt(s1) - sqrt(s2))^2.
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    s1, s2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 9.0])
    fd = frechet_distance_from_statistics(mu1, np.diag(s1), mu2, np.diag(s2))
    assert fd == pytest.approx(5.0 + 1.0 + 1.0 + 0.0, abs=1e-10)


def test_gaussian_statistics_are_unbiased():
    features = np.array([[0.0, 0.0], [2.0, 2.0]])
    mu, sigma = gaussian_statistics(features)
    np.testing.assert_allclose(mu, [1.0, 1.0])
    np.testing.assert_allclose(sigma, [[2.0, 2.0], [2.0, 2.0]])  # N - 1 in the denominator


def test_fd_bad_input():
    with pytest.raises(ValueError, match="dimension"):
        frechet_distance(np.zeros((4, 3)), np.zeros((4, 2)))
    with pytest.raises(ValueError, match="at least 2 clips"):
        frechet_distance(np.zeros((1, 3)), np.zeros((4, 3)))
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(np.full((4, 3), np.nan), np.zeros((4, 3)))


def test_kl_of_identical_predictions_is_zero():
    logits = torch.randn(6, 527)
    assert kl_divergence(logits, logits) == pytest.approx(0.0, abs=1e-12)
    assert kl_divergence(logits, logits, activation="sigmoid") == pytest.approx(0.0, abs=1e-12)
    assert kl_divergence(logits + 3.0, logits) == pytest.approx(0.0, abs=1e-12)  # softmax ignores a shift


def test_kl_matches_a_hand_computed_example():
    # Clip 0: reference p = (1/2, 1/4, 1/4), generated uniform (1/3 each); clip 1: identical.
    reference = torch.tensor([[math.log(0.5), math.log(0.25), math.log(0.25)], [1.0, 2.0, 3.0]], dtype=torch.float64)
    generated = torch.tensor([[0.0, 0.0, 0.0], [1.0, 2.0, 3.0]], dtype=torch.float64)
    kl_clip0 = 0.5 * math.log(0.5 / (1 / 3)) + 2 * 0.25 * math.log(0.25 / (1 / 3))
    assert kl_divergence(generated, reference) == pytest.approx(kl_clip0 / 2, abs=1e-12)
    # It is KL(reference || generated), not the reverse.
    reverse = 3 * (1 / 3) * 0 + (1 / 3) * (math.log((1 / 3) / 0.5) + 2 * math.log((1 / 3) / 0.25))
    assert kl_divergence(reference, generated) == pytest.approx(reverse / 2, abs=1e-12)
    assert abs(kl_clip0 - reverse) > 1e-3
    # Sigmoid variant: sum_c sigmoid(r_c) log(sigmoid(r_c) / sigmoid(g_c)), no complement term (av-benchmark).
    r, g = torch.tensor([[2.0, -1.0]]), torch.tensor([[0.0, 0.0]])
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    expected = sig(2.0) * math.log(sig(2.0) / 0.5) + sig(-1.0) * math.log(sig(-1.0) / 0.5)
    assert kl_divergence(g, r, activation="sigmoid") == pytest.approx(expected, abs=1e-12)


def test_kl_bad_input():
    with pytest.raises(ValueError, match="paired"):
        kl_divergence(torch.zeros(3, 5), torch.zeros(4, 5))
    with pytest.raises(ValueError, match="activation"):
        kl_divergence(torch.zeros(3, 5), torch.zeros(3, 5), activation="relu")


def test_inception_score_of_uniform_predictions_is_one():
    mean, std = inception_score(torch.zeros(40, 527))
    assert mean == pytest.approx(1.0, abs=1e-12) and std == pytest.approx(0.0, abs=1e-12)
    # Identical (non-uniform) predictions carry no diversity either.
    mean, _ = inception_score(torch.randn(1, 10).repeat(30, 1), splits=3)
    assert mean == pytest.approx(1.0, abs=1e-12)


def test_inception_score_of_confident_balanced_predictions_is_the_class_count():
    classes = 5
    logits = 60.0 * torch.eye(classes).repeat(8, 1)  # 40 confident clips, 8 per class
    mean, _ = inception_score(logits, splits=1)
    assert mean == pytest.approx(classes, rel=1e-6)
    # Per chunk: 4 clips after a seeded shuffle; the chunk's IS is the exp of the entropy of its class histogram.
    mean10, std10 = inception_score(logits, splits=10, shuffle_seed=2020)
    labels = torch.arange(classes).repeat(8)[torch.from_numpy(np.random.RandomState(2020).permutation(40))]
    expected = []
    for i in range(10):
        counts = torch.bincount(labels[4 * i : 4 * i + 4], minlength=classes).double() / 4
        expected.append(math.exp(-(counts[counts > 0] * counts[counts > 0].log()).sum()))
    assert mean10 == pytest.approx(np.mean(expected), rel=1e-6)
    assert std10 == pytest.approx(np.std(expected), rel=1e-5, abs=1e-9)
    with pytest.raises(ValueError, match="splits"):
        inception_score(logits, splits=41)
