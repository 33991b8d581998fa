"""Hypothesis 4: weight matrices of different layers write into shared
directions of the residual stream.

Each layer's writing matrix is summarised by the span of its top left
singular vectors (the residual-stream directions it writes most strongly);
layers are compared by the overlap of those subspaces against the overlap
that unrelated random subspaces would have by chance.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

TOPK_METHOD = "svds-arpack-float32"  # in the weights cache key: bases from another method are recomputed


def top_left_singular_vectors(weight: np.ndarray, k: int) -> np.ndarray:
    """Orthonormal ``(d_model, k)`` basis of the directions ``weight`` writes most.

    ``weight`` is laid out out x in, ``(d_model, d_in)``, and writes into the
    residual stream (attention output projection, MLP down projection), so its
    left singular vectors live in the residual stream.  ``k`` is capped at
    ``min(weight.shape)``, the rank the matrix can have.

    Exact top-k by ARPACK's Lanczos iteration (``scipy.sparse.linalg.svds``) in
    float32, from a fixed start vector so the basis is reproducible: a full SVD
    computes every singular vector to keep 16 (40x the time at 3072²), and
    randomized sketches (``torch.svd_lowrank``) recover only 50-75% of the
    subspace of trained weights, whose spectra decay slowly. Matches a float64
    full SVD to an overlap of 0.9999 or better (``tests/unit/test_weights_topk.py``).
    A matrix too small for Lanczos (``k`` ≥ its smaller side − 1) gets a full SVD. The basis is
    re-orthonormalised in float64 (QR; the span is unchanged).
    """
    from scipy.sparse.linalg import svds

    weight = np.asarray(weight)
    if weight.ndim != 2:
        raise ValueError(f"weight must be a (d_model, d_in) matrix; got shape {weight.shape}")
    if k < 1:
        raise ValueError(f"k must be at least 1; got {k}")
    weight = weight.astype(np.float32, copy=False)
    k = min(k, min(weight.shape))
    if k >= min(weight.shape) - 1:  # ARPACK needs k < min(shape); a matrix this small costs nothing in full
        u, _, _ = np.linalg.svd(weight.astype(np.float64), full_matrices=False)
        return u[:, :k]
    start = np.random.default_rng(0).standard_normal(min(weight.shape)).astype(np.float32)  # fixed: reproducible
    u, singular, _ = svds(weight, k=k, v0=start)
    # orthonormal in float64 (float32 Lanczos vectors are so to ~1e-7), so overlaps are exact for the span found
    basis, _ = np.linalg.qr(u[:, np.argsort(singular)[::-1]].astype(np.float64))
    return basis


def subspace_overlap(u: np.ndarray, v: np.ndarray) -> float:
    """Mean squared cosine of the principal angles between two k-dim subspaces.

    With orthonormal bases ``u`` and ``v`` of shape ``(d, k)`` this is
    ``||uᵀv||_F² / k``: 1 for the same subspace, 0 for orthogonal ones, and
    in expectation ``k / d`` for independent uniformly random subspaces of
    R^d, which is the chance level to compare against.
    """
    u = np.asarray(u, dtype=np.float64)
    v = np.asarray(v, dtype=np.float64)
    if u.ndim != 2 or u.shape != v.shape:
        raise ValueError(f"bases must be (d, k) of equal shape; got {u.shape} and {v.shape}")
    return float(np.sum((u.T @ v) ** 2) / u.shape[1])


def overlap_matrix(bases: Sequence[np.ndarray]) -> np.ndarray:
    """Symmetric ``(L, L)`` matrix of pairwise :func:`subspace_overlap`.

    The diagonal is set to exactly 1 (a subspace with itself) so rounding in
    ``uᵀu`` does not leak into summaries.
    """
    size = len(bases)
    matrix = np.eye(size)
    for i in range(size):
        for j in range(i + 1, size):
            matrix[i, j] = matrix[j, i] = subspace_overlap(bases[i], bases[j])
    return matrix


def random_overlap(k: int, d: int) -> float:
    """Chance level ``k / d`` of :func:`subspace_overlap` for random subspaces."""
    if not 1 <= k <= d:
        raise ValueError(f"need 1 <= k <= d; got k={k}, d={d}")
    return k / d


@dataclass(frozen=True)
class RotationNull:
    """Law of the mean pairwise overlap of ``layers`` subspaces when each layer's matrix is turned by its
    own random rotation of R^d, which makes its top-k subspace uniformly random: what "no shared
    directions" predicts, sharper than ``k / d`` alone because it says how far chance can stray."""

    mean: float
    sd: float


def rotation_null(k: int, d: int, layers: int) -> RotationNull:
    """Mean ``k / d`` and exact standard deviation of the mean over ``layers · (layers − 1) / 2`` pairs.

    For uniformly random rank-k projections P, Q of R^d, ``tr(PQ)`` has variance
    ``2k²(d−k)² / (d²(d−1)(d+2))``, so one pair's overlap ``tr(PQ) / k`` has variance
    ``2(d−k)² / (d²(d−1)(d+2))``. Pair overlaps are pairwise uncorrelated under the null (given layer i,
    its overlaps with j and with l are independent and their law does not depend on layer i), so the mean
    over pairs has that variance divided by the number of pairs. Closed form, because a Monte Carlo at the
    size of a large model would cost a teraflop; ``tests/unit/test_weights_null.py`` checks it by one at small d.
    """
    if layers < 2:
        raise ValueError(f"need at least 2 layers to compare; got {layers}")
    chance = random_overlap(k, d)
    pair_variance = 2 * (d - k) ** 2 / (d**2 * (d - 1) * (d + 2))
    return RotationNull(mean=chance, sd=math.sqrt(pair_variance / (layers * (layers - 1) / 2)))


@dataclass(frozen=True)
class OverlapSummary:
    """Overlap between layers against chance: ``ratio`` well above 1 means
    layers share directions beyond what random subspaces would, and ``null_z``
    says by how many standard deviations of the rotation null (:func:`rotation_null`)
    the mean overlap exceeds chance; with few layers or a small ``d_model`` a
    large ratio can still be within chance's reach."""

    mean_offdiag: float
    mean_adjacent: float
    chance: float
    ratio: float
    null_sd: float
    null_z: float


def summarize_overlap(matrix: np.ndarray, k: int, d: int) -> OverlapSummary:
    """Mean overlap over all pairs of distinct layers and over neighbours.

    Adjacent layers are reported apart because shared directions between
    neighbours alone would point to a local rather than a global structure.
    ``null_z`` is NaN when ``k = d`` (every subspace is the whole space: no
    null to stand out from), so a threshold on it fails rather than passes.
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] < 2:
        raise ValueError(f"need a square overlap matrix of at least 2 layers; got {matrix.shape}")
    offdiag = ~np.eye(matrix.shape[0], dtype=bool)
    null = rotation_null(k, d, matrix.shape[0])
    mean_offdiag = float(matrix[offdiag].mean())
    return OverlapSummary(
        mean_offdiag=mean_offdiag,
        mean_adjacent=float(np.diagonal(matrix, offset=1).mean()),
        chance=null.mean,
        ratio=mean_offdiag / null.mean,
        null_sd=null.sd,
        null_z=(mean_offdiag - null.mean) / null.sd if null.sd > 0 else math.nan,
    )


def excess_shared_dimensions(mean_overlap: float, k: int, d: int) -> float:
    """``k · (mean_overlap − k/d)``: how many of its top-k directions a pair of layers shares beyond chance.

    ``k · overlap`` is the summed squared cosines of the principal angles, the number of directions two
    subspaces have in common (one exactly shared direction adds 1); random subspaces share ``k²/d`` of them.
    Unlike the ratio to chance, it does not grow with the width: one direction of 16 shared is 2.4× chance at
    d = 384 and 20.9× at d = 5120, but one excess dimension at both.
    """
    return k * (mean_overlap - random_overlap(k, d))
