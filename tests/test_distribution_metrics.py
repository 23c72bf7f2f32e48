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


# ---------------------------------------------------------------------------------------------- DeSync
from foley_toolkit.evaluation.extractors.synchformer_desync import (  # noqa: E402
    AV_BENCHMARK_OFFSET_GRID,
    SynchformerDeSync,
    desync_clip_offsets,
    desync_score,
    desync_window_starts,
    segment_window_seconds,
)

STEP = 0.08  # one tubelet step (2 frames at 25 fps): token 8 s + t covers grid step 4 s + t


def _stub_classifier(sample_rate, grid):
    """Offset logits from the cross-correlation of the visual event indicator with the audio energy, per 0.08 s step:
    it returns the true shift of the window it is given, if (and only if) the window was cut right."""

    def classify(tokens, audio):
        num_segments = tokens.shape[1] // 8
        steps = (num_segments - 1) * 4 + 8
        visual = torch.zeros(steps, dtype=torch.float64)
        for s in range(num_segments):
            visual[4 * s : 4 * s + 8] = torch.maximum(visual[4 * s : 4 * s + 8], tokens[0, 8 * s : 8 * s + 8, 0].double())
        per_step = int(round(STEP * sample_rate))
        energy = audio[0, : steps * per_step].double().reshape(steps, per_step).pow(2).sum(-1)
        lags = range(-30, 31)
        scores = [float((visual[max(0, -l) : steps - max(0, l)] * energy[max(0, l) : steps - max(0, -l)]).sum()) for l in lags]
        offset = list(lags)[int(np.argmax(scores))] * STEP
        return -(torch.tensor(grid) - offset).abs()[None]

    return classify


def _clip(event_steps, shifts, sample_rate=16000, seconds=8.0):
    """Visual tokens (192, 1) of an 8 s clip with events at `event_steps`, and audio with each event `shift` later."""
    num_segments = int((seconds * 25 - 16) // 8 + 1)
    tokens = torch.zeros(num_segments * 8, 1)
    audio = torch.zeros(int(seconds * sample_rate))
    for g, shift in zip(event_steps, shifts):
        for s in range(num_segments):
            if 0 <= g - 4 * s < 8:
                tokens[8 * s + g - 4 * s, 0] = 1.0
        start = int(round(((g + 0.25) * STEP + shift) * sample_rate))
        audio[start : start + 200] = 0.5
    return tokens, audio


def test_desync_windowing_follows_av_benchmark():
    assert desync_window_starts(24, 14) == (0, 10)  # 8 s clip: first and last 4.8 s
    assert desync_window_starts(14, 14) == (0, 0)  # both windows scored even when they coincide
    assert segment_window_seconds(0, 14) == pytest.approx((0.0, 4.8))
    assert segment_window_seconds(10, 14) == pytest.approx((3.2, 4.8))  # ends at 8.0 s
    with pytest.raises(ValueError, match="fewer than the 14"):
        desync_window_starts(13, 14)
    assert len(AV_BENCHMARK_OFFSET_GRID) == 21 and AV_BENCHMARK_OFFSET_GRID[10] == 0.0
    assert AV_BENCHMARK_OFFSET_GRID[11] == pytest.approx(0.2)


def test_desync_with_a_classifier_that_returns_the_true_shift():
    sr, grid = 16000, AV_BENCHMARK_OFFSET_GRID
    classifier = _stub_classifier(sr, grid)
    # Events in the first 3 s heard 0.4 s late, events after 5 s heard 0.8 s early: the first window (0-4.8 s) sees
    # only the first group, the last (3.2-8 s) only the second.
    steps = [6, 19, 31, 70, 83, 90]
    tokens, audio = _clip(steps, [0.4, 0.4, 0.4, -0.8, -0.8, -0.8], sr)
    offsets = desync_clip_offsets(classifier, tokens, audio, sr, grid)
    assert offsets == pytest.approx([0.4, -0.8])
    aligned = desync_clip_offsets(classifier, *_clip(steps, [0.0] * 6, sr), sr, grid)
    assert aligned == pytest.approx([0.0, 0.0])
    assert desync_score([offsets, aligned]) == pytest.approx((0.4 + 0.8) / 4)
    with pytest.raises(ValueError, match="needs"):
        desync_clip_offsets(classifier, tokens, audio[: 7 * sr], sr, grid)
    with pytest.raises(ValueError, match="empty"):
        desync_score([])


def test_synchformer_desync_runs_the_project_models_on_the_windows():
    from foley_toolkit.models.autoencoders import LogMelSpectrogram
    from foley_toolkit.models.encoders import tiny_synchformer_config
    from foley_toolkit.models.encoders.synchformer import SynchformerEncoder
    from foley_toolkit.models.encoders.synchformer_sync_head import SynchformerSyncHead

    torch.manual_seed(0)
    encoder = SynchformerEncoder(**tiny_synchformer_config()).eval()
    head = SynchformerSyncHead(visual_dim=32, num_classes=5, audio_channels=8, audio_layers=1, max_lag=4).eval()
    desync = SynchformerDeSync(encoder, head, offset_step=0.12, window_segments=3)
    assert desync.offset_grid == pytest.approx((-0.24, -0.12, 0.0, 0.12, 0.24))
    frames = torch.rand(40, 3, 32, 32) * 2 - 1  # 1.6 s: 4 segments, windows start at segments 0 and 1
    audio = torch.randn(int(1.6 * 44100)) * 0.1
    offsets = desync.clip_offsets(frames, audio)
    # The same windows cut by hand: tokens 0-23 with audio 0-1.28 s, tokens 8-31 with audio 0.32-1.60 s.
    tokens = encoder(frames[None])[0]
    mel = LogMelSpectrogram()
    expected = []
    for start_token, start_sample in ((0, 0), (8, int(round(0.32 * 44100)))):
        window_audio = audio[start_sample : start_sample + int(round(1.28 * 44100))]
        logits = head(tokens[start_token : start_token + 24][None], mel(window_audio[None]))
        expected.append(desync.offset_grid[int(logits.argmax())])
    assert offsets == pytest.approx(expected)
    with pytest.raises(ValueError, match="visual tokens"):
        SynchformerDeSync(encoder, SynchformerSyncHead(visual_dim=16, num_classes=5), offset_step=0.12)
