"""The rotation null of hypothesis 4 (:func:`geomcheck.stats.weights.rotation_null`): its closed-form mean and
standard deviation agree with a Monte Carlo of the procedure itself, on fixed matrices turned by random
rotations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from geomcheck.stats.weights import overlap_matrix, rotation_null, summarize_overlap, top_left_singular_vectors


def haar_rotation(rng: np.random.Generator, d: int) -> np.ndarray:
    """A Haar-random orthogonal matrix: QR of a Gaussian, with the signs of R's diagonal moved into Q."""
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.diag(r))


@pytest.mark.slow
def test_rotation_null_matches_monte_carlo_of_rotated_fixed_matrices():
    """Fixed matrices with a strongly shared top-k subspace (observed far above chance), each turned by its
    own random rotation: the mean overlap over pairs has the null's mean and sd within Monte-Carlo error."""
    rng = np.random.default_rng(16)
    d, d_in, k, layers, draws = 24, 32, 4, 5, 3000
    shared = np.linalg.qr(rng.standard_normal((d, k)))[0]
    weights = [10 * shared @ rng.standard_normal((k, d_in)) + rng.standard_normal((d, d_in)) for _ in range(layers)]
    observed = summarize_overlap(overlap_matrix([top_left_singular_vectors(w, k) for w in weights]), k, d)
    assert observed.null_z > 20  # the fixed matrices do share directions; the rotations must destroy that

    means = np.array([
        summarize_overlap(overlap_matrix([top_left_singular_vectors(haar_rotation(rng, d) @ w, k) for w in weights]), k, d).mean_offdiag
        for _ in range(draws)
    ])
    null = rotation_null(k, d, layers)
    assert null.mean == k / d
    assert means.mean() == pytest.approx(null.mean, abs=4 * null.sd / math.sqrt(draws))
    assert means.std(ddof=1) == pytest.approx(null.sd, rel=0.06)  # the sd's relative Monte-Carlo error is ~1.5%
    z = (means - null.mean) / null.sd
    assert np.mean(z > 3) < 0.01  # the check's default min_null_z rarely passes under the null


def test_rotation_null_shrinks_with_layers_and_width_and_vanishes_when_k_is_d():
    assert rotation_null(4, 24, 20).sd < rotation_null(4, 24, 5).sd
    assert rotation_null(16, 2048, 5).sd < rotation_null(16, 576, 5).sd
    assert rotation_null(8, 8, 3).sd == 0
    assert math.isnan(summarize_overlap(np.ones((3, 3)), k=8, d=8).null_z)
    with pytest.raises(ValueError, match="at least 2 layers"):
        rotation_null(4, 24, 1)
