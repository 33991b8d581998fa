"""The research note's mechanism on activations: each layer moves the state in similar directions.

A prompt's update at a layer is the difference of two streams there: the attention branch ``mid − pre`` or
the MLP branch ``post − mid`` (as added to the residual; on post-LN BERT, differences of LayerNorm outputs).
Its alignment across layers is the mean cosine between its updates at two distinct layers. Plain numpy.
"""

from __future__ import annotations

import math

import numpy as np

# update name -> the streams it is the difference of (after − before)
BRANCHES: dict[str, tuple[str, str]] = {"attention": ("pre", "mid"), "mlp": ("mid", "post")}


def update_alignment(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """Per prompt, the mean over pairs of distinct layers of the cosine between its updates ``after − before``
    at the two layers, from ``(prompts, layers, features)`` readings; layers where a prompt's update is 0 are
    left out of its pairs (nan with fewer than two left).

    With unit updates ``u_l`` the mean over pairs is ``(‖Σ u_l‖² − m) / (m(m − 1))``: linear in the layers, no
    layers × layers Gram matrix per prompt. Signed: a layer undoing another's step is no similar direction.
    """
    steps = np.asarray(after, dtype=np.float64) - np.asarray(before, dtype=np.float64)
    if steps.ndim != 3:
        raise ValueError(f"readings must be (prompts, layers, features); got shape {steps.shape}")
    norms = np.linalg.norm(steps, axis=-1, keepdims=True)
    units = np.divide(steps, norms, out=np.zeros_like(steps), where=norms > 0)
    counts = (norms[..., 0] > 0).sum(axis=1).astype(np.float64)
    total = np.sum(units.sum(axis=1) ** 2, axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(counts >= 2, (total - counts) / (counts * (counts - 1)), np.nan)


def rotation_null_sd(d: int, layers: int) -> float:
    """An upper bound on the standard deviation of the mean alignment when each layer's updates are turned by
    their own random rotation of R^d (the null "layers move the state in unrelated directions", mean 0).

    For one pair of layers the mean over prompts is ``⟨R, M⟩`` with ``R`` uniformly random orthogonal and
    ``‖M‖_F ≤ 1``, so its variance is at most ``1/d``; pairs are uncorrelated under the null (as in
    :func:`geomcheck.stats.weights.rotation_null`), so the mean over ``L(L − 1)/2`` pairs has at most ``1/d`` over
    their number. Exact when every prompt's update at a layer points the same way; smaller otherwise.
    """
    if layers < 2 or d < 1:
        raise ValueError(f"need at least 2 layers and 1 feature; got {layers} layers, d = {d}")
    return math.sqrt(1.0 / (d * layers * (layers - 1) / 2))
