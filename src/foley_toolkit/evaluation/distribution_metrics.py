r"""Distribution metrics of video-to-audio benchmarks (Kling-Foley Table 1, av-benchmark): Fréchet distance (FD),
paired KL divergence (KL) and Inception score (IS) on the embeddings and class logits of a pretrained audio tagger.

The conventions are av-benchmark's (github.com/hkchengrex/av-benchmark, ``av_bench/metrics``), which MMAudio and the
papers that compare with it use, so numbers computed here sit next to theirs:

* **FD** between the generated set ``P`` and the reference set ``R``, each a Gaussian fitted to its embeddings
  (mean, unbiased covariance ``np.cov(rowvar=False)``)::

      FD = ||mu_P - mu_R||^2 + Tr(S_P + S_R - 2 (S_P S_R)^(1/2))

  (pytorch-fid / audioldm_eval formula; the trace of the square root is computed from symmetric eigenvalues, or
  in clip space when there are fewer clips than dimensions, see `frechet_distance`). FD_PANNs uses the 2048-d PANNs CNN14 embedding (ReLU of ``fc1``).
* **KL** is paired (the generated clip for a video against the reference audio of the same video) and taken as
  ``KL(reference || generated)`` on the *softmax* of the class logits, summed over classes and averaged over
  clips (av-benchmark's ``kl_softmax``, the AudioGen / SpecVQGAN / Diff-Foley formulation that its tables report).
  The ``"sigmoid"`` variant is av-benchmark's ``kl_sigmoid``: the same sum with ``p = sigmoid(logits)``, i.e. only
  the positive-class term of each binary label.
* **IS** ``= exp(E_x KL(p(y|x) || p(y)))`` on the softmax of the generated clips' logits, computed on ``splits``
  (10) consecutive chunks after a seeded shuffle (seed 2020) and reported as mean and standard deviation over the
  chunks (audioldm_eval / av-benchmark ``compute_isc``).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

KL_ACTIVATIONS = ("softmax", "sigmoid")


def _as_2d_float64(features, name: str) -> np.ndarray:
    if isinstance(features, torch.Tensor):
        features = features.detach().to("cpu", torch.float64).numpy()
    array = np.asarray(features, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"`{name}` must be a 2-D (num_clips, dim) array, got shape {array.shape}.")
    if not np.isfinite(array).all():
        raise ValueError(f"`{name}` holds NaN or infinite values.")
    return array


def gaussian_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    r"""Mean `(dim,)` and unbiased covariance `(dim, dim)` of `(num_clips, dim)` features (float64)."""
    array = _as_2d_float64(features, "features")
    if array.shape[0] < 2:
        raise ValueError(f"`features` needs at least 2 clips to estimate a covariance, got {array.shape[0]}.")
    return array.mean(axis=0), np.atleast_2d(np.cov(array, rowvar=False))


def _trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    # Tr((S1 S2)^1/2) = sum of the square roots of the eigenvalues of S1 S2, which are those of the symmetric PSD
    # S1^1/2 S2 S1^1/2: two symmetric eigen-decompositions, exact even when S1 S2 is singular.
    w, v = np.linalg.eigh(sigma1)
    root1 = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
    inner = np.linalg.eigvalsh(root1 @ sigma2 @ root1)
    return float(np.sqrt(np.clip(inner, 0.0, None)).sum())


def frechet_distance_from_statistics(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    r"""
    Fréchet distance between `N(mu1, sigma1)` and `N(mu2, sigma2)`:
    ``||mu1 - mu2||^2 + Tr(sigma1) + Tr(sigma2) - 2 Tr((sigma1 sigma2)^(1/2))``.

    Args:
        mu1, mu2 (`np.ndarray` of shape `(dim,)`): Means.
        sigma1, sigma2 (`np.ndarray` of shape `(dim, dim)`): Covariances (symmetric PSD).

    Returns:
        `float`, >= 0 up to rounding.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape:
        raise ValueError(f"The two means have different shapes: {mu1.shape} and {mu2.shape}.")
    if sigma1.shape != sigma2.shape or sigma1.shape != (mu1.shape[0], mu1.shape[0]):
        raise ValueError(
            f"The covariances must both be ({mu1.shape[0]}, {mu1.shape[0]}), got {sigma1.shape} and {sigma2.shape}."
        )
    diff = mu1 - mu2
    trace_sqrt = _trace_sqrt_product(sigma1, sigma2)
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt)


def frechet_distance(generated_features, reference_features) -> float:
    r"""
    FD between the Gaussians fitted to two feature sets (av-benchmark ``compute_fd``: mean and unbiased covariance of
    each set, then the closed form of `frechet_distance_from_statistics`).

    With fewer clips than dimensions (a 2048-d embedding, a few hundred clips) the covariances have rank < dim and
    ``Tr((S1 S2)^1/2)`` is computed exactly in clip space instead: with ``X1``, ``X2`` the centred features,
    ``S1 S2`` has the non-zero eigenvalues of ``(X1 X2^T)(X1 X2^T)^T / ((n1-1)(n2-1))``, so the trace is the sum of the
    singular values of ``X1 X2^T`` over ``sqrt((n1-1)(n2-1))``. (av-benchmark's ``scipy.linalg.sqrtm`` of the singular
    product is only approximate there; with more clips than dimensions both give the same value.)

    Args:
        generated_features (`np.ndarray` or `torch.Tensor` of shape `(num_generated, dim)`): Generated clips.
        reference_features (`np.ndarray` or `torch.Tensor` of shape `(num_reference, dim)`): Reference clips (the
            two sets need not be paired or of the same size).

    Returns:
        `float`: the distance (0 for a set against itself).
    """
    generated = _as_2d_float64(generated_features, "generated_features")
    reference = _as_2d_float64(reference_features, "reference_features")
    if generated.shape[1] != reference.shape[1]:
        raise ValueError(
            f"`generated_features` has dimension {generated.shape[1]}, `reference_features` {reference.shape[1]}."
        )
    mu1, sigma1 = gaussian_statistics(generated)
    mu2, sigma2 = gaussian_statistics(reference)
    n1, n2, dim = generated.shape[0], reference.shape[0], generated.shape[1]
    if min(n1, n2) >= dim:
        return frechet_distance_from_statistics(mu1, sigma1, mu2, sigma2)
    cross = (generated - mu1) @ (reference - mu2).T  # (n1, n2)
    trace_sqrt = np.linalg.svd(cross, compute_uv=False).sum() / np.sqrt((n1 - 1) * (n2 - 1))
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt)


def _as_logits(logits, name: str) -> torch.Tensor:
    tensor = torch.as_tensor(logits).detach().to("cpu", torch.float64)
    if tensor.ndim != 2 or tensor.shape[0] == 0:
        raise ValueError(f"`{name}` must be a non-empty 2-D (num_clips, num_classes or dim) array, got {tuple(tensor.shape)}.")
    if not torch.isfinite(tensor).all():
        raise ValueError(f"`{name}` holds NaN or infinite values.")
    return tensor


def kl_divergence(generated_logits, reference_logits, activation: str = "softmax") -> float:
    r"""
    Paired KL divergence ``mean_i KL(p_ref_i || p_gen_i)`` (av-benchmark ``compute_kl``).

    Args:
        generated_logits (`torch.Tensor` or `np.ndarray` of shape `(num_clips, num_classes)`): Class logits of the
            generated clips (before any activation).
        reference_logits (same shape): Class logits of the reference clips; row ``i`` is the reference of row ``i``.
        activation (`str`, defaults to ``"softmax"``): ``"softmax"`` (the reported KL: ``sum_c p_ref log(p_ref /
            p_gen)`` over one distribution per clip) or ``"sigmoid"`` (the same sum over per-class sigmoids).

    Returns:
        `float`: KL summed over classes, averaged over clips (nats).
    """
    if activation not in KL_ACTIVATIONS:
        raise ValueError(f"`activation` must be one of {KL_ACTIVATIONS}, got {activation!r}.")
    generated = _as_logits(generated_logits, "generated_logits")
    reference = _as_logits(reference_logits, "reference_logits")
    if generated.shape != reference.shape:
        raise ValueError(
            f"`generated_logits` {tuple(generated.shape)} and `reference_logits` {tuple(reference.shape)} must be "
            "paired row by row (same shape)."
        )
    log_p = F.log_softmax if activation == "softmax" else (lambda x, dim: F.logsigmoid(x))
    log_ref, log_gen = log_p(reference, dim=1), log_p(generated, dim=1)
    return float((log_ref.exp() * (log_ref - log_gen)).sum() / generated.shape[0])


def inception_score(logits, splits: int = 10, shuffle_seed: int | None = 2020) -> tuple[float, float]:
    r"""
    Inception score of a set of clips from their class logits (audioldm_eval / av-benchmark ``compute_isc``).

    Args:
        logits (`torch.Tensor` or `np.ndarray` of shape `(num_clips, num_classes)`): Class logits of the generated
            clips; ``p(y|x)`` is their softmax.
        splits (`int`, defaults to 10): Chunks the score is computed on (chunk ``i`` is rows
            ``i*N//splits : (i+1)*N//splits``).
        shuffle_seed (`int`, *optional*, defaults to 2020): Seed of the ``np.random.RandomState`` permutation applied
            before chunking; None keeps the order.

    Returns:
        `(mean, std)` over the chunks of ``exp(mean_x KL(p(y|x) || mean_x p(y|x)))``; 1 when every clip predicts the
        same distribution, ``num_classes`` at most.
    """
    features = _as_logits(logits, "logits")
    num_clips = features.shape[0]
    if not 1 <= splits <= num_clips:
        raise ValueError(f"`splits` must be between 1 and the number of clips ({num_clips}), got {splits}.")
    if shuffle_seed is not None:
        features = features[torch.from_numpy(np.random.RandomState(shuffle_seed).permutation(num_clips))]
    p, log_p = features.softmax(dim=1), features.log_softmax(dim=1)
    scores = []
    for i in range(splits):
        chunk = slice(i * num_clips // splits, (i + 1) * num_clips // splits)
        marginal = p[chunk].mean(dim=0, keepdim=True)
        kl = (p[chunk] * (log_p[chunk] - marginal.log())).sum(dim=1).mean()
        scores.append(float(kl.exp()))
    return float(np.mean(scores)), float(np.std(scores))


def mean_cosine_similarity(embeddings_a, embeddings_b) -> float:
    r"""
    Mean over rows of the cosine similarity of paired embeddings: the CLAP score (caption text vs generated audio) and
    the ImageBind score (video vs generated audio) of av-benchmark (``torch.cosine_similarity(a, b, dim=-1).mean()``).

    Args:
        embeddings_a, embeddings_b (`torch.Tensor` or `np.ndarray` of shape `(num_clips, dim)`): Row ``i`` of one is
            paired with row ``i`` of the other.

    Returns:
        `float` in [-1, 1].
    """
    a, b = _as_logits(embeddings_a, "embeddings_a"), _as_logits(embeddings_b, "embeddings_b")
    if a.shape != b.shape:
        raise ValueError(f"`embeddings_a` {tuple(a.shape)} and `embeddings_b` {tuple(b.shape)} must be paired (same shape).")
    return float(F.cosine_similarity(a, b, dim=-1).mean())
